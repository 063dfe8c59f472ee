"""Make the project's copy of the ICT Face Model Light from the packed original.

    python -m tools.ict_head.trim <ict_face_model_light.npz> tools/ict_head/data/ict_head.npz

The original (ICT-FaceKit, USC Institute for Creative Technologies, MIT licence) carries helper
meshes made for a game engine's translucent eye shaders (lacrimal fluid, eye blend, eye
occlusion) and texture coordinates; our renderer paints solid textures and draws every surface
opaque, so they are dropped and the vertices renumbered. What is kept: the neutral vertices,
the triangles with their material, a part label per vertex (from ICT-FaceKit's documented vertex
ranges) and the 57 expression shapes. Deterministic: the same input gives the same bytes.
"""
from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np

#: Materials kept, in this order (the index is the stored ``triangle_material``).
MATERIALS = ("skin", "gums_tongue", "teeth", "sclera", "iris", "eyelashes")
_SOURCE_MATERIAL = {"M_Face": 0, "M_BackHead": 0, "M_GumsTongue": 1, "M_Teeth": 2,
                    "M_ScleraLeft": 3, "M_ScleraRight": 3, "M_IrisLeft": 4, "M_IrisRight": 4,
                    "M_EyeLashes": 5}

#: Vertex parts (``vertex_part``), from ICT-FaceKit's vertex ranges of the original numbering.
PARTS = ("face", "head_neck", "mouth_socket", "eye_socket", "gums_tongue", "teeth", "eyeball",
         "eyelashes")
_SOURCE_RANGES = ((0, 9408), (9409, 11247), (11248, 13293), (13294, 14061), (14062, 17038),
                  (17039, 21450), (21451, 24590), (25351, 26718))


def trim(source: dict) -> dict:
    """The arrays of the project's asset from the original's arrays."""
    names = [str(n) for n in source["material_names"]]
    src_mat = np.asarray(source["triangle_material"])
    keep_tri = np.array([names[m] in _SOURCE_MATERIAL for m in src_mat])
    tris = np.asarray(source["triangles"])[keep_tri]
    used = np.unique(tris)
    renumber = np.full(len(source["vertices"]), -1, np.int64)
    renumber[used] = np.arange(len(used))
    part = np.full(len(source["vertices"]), -1, np.int64)
    for p, (lo, hi) in enumerate(_SOURCE_RANGES):
        part[lo:hi + 1] = p
    if (part[used] < 0).any():
        raise ValueError("a kept triangle uses a vertex outside the documented part ranges")
    material = np.array([_SOURCE_MATERIAL[names[m]] for m in src_mat[keep_tri]], np.int8)
    deltas = np.asarray(source["expression_deltas"])[:, used]
    return {
        "vertices": np.asarray(source["vertices"], np.float32)[used],
        "triangles": renumber[tris].astype(np.int32),
        "triangle_material": material,
        "material_names": np.array(MATERIALS),
        "vertex_part": part[used].astype(np.int8),
        "part_names": np.array(PARTS),
        "expression_names": np.asarray(source["expression_names"]).astype(str),
        "expression_deltas": deltas.astype(np.float16),
    }


def write_npz(path: Path, arrays: dict) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so the bytes depend on the data only."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the packed ICT Face Model Light (.npz)")
    parser.add_argument("output", type=Path, help="where to write the trimmed asset (.npz)")
    args = parser.parse_args(argv)
    with np.load(args.source, allow_pickle=False) as src:
        arrays = trim({k: src[k] for k in src.files})
    write_npz(args.output, arrays)
    print(f"{args.output}: {len(arrays['vertices'])} vertices, {len(arrays['triangles'])} "
          f"triangles, {args.output.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
