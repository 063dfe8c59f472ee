"""Training: the run (``trainer``), what trains when (``schedule``, ``face_error``), the loss,
the regularisers, the row-selective optimiser, densification, how images reach the device
(``image_feeder``) and the training record (``progress``)."""
