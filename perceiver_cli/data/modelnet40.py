"""ModelNet40 meshes (OFF) -> point clouds sampled on their surfaces.

Reads the standard layout `ModelNet40/<class>/{train,test}/<class>_NNNN.off` from a folder or a
zip (read in place). Each mesh is parsed with trimesh, sampled uniformly on its surface (area
weighted) with a seed derived from its path, so a rerun gives identical arrays, then centred at
zero and scaled into the unit sphere. Meshes are processed in parallel worker processes; one
that cannot be read, is empty or has no surface is listed in `skipped` and never stops the run.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import zlib
from pathlib import Path

import numpy as np
import trimesh  # imported here, before the worker processes fork: each would otherwise spend ~1 s importing it

from ..console import track
from ..errors import UserError
from .files import Unreadable, is_hidden, open_source, skipped_example
from .memory import check_points
from .prepared import PreparedDataset, Split, check_seed

LAYOUT = "<class>/train/*.off and <class>/test/*.off (ModelNet40/<class>/{train,test}/<class>_NNNN.off)"
SPLITS = ("train", "test")
# the real files' quirk: "OFF3514 3546 0" on one line instead of "OFF" and a newline
MERGED_HEADER = re.compile(rb"^\s*OFF[ \t]*(\d)")
# the OFF variants whose vertex lines start with x y z (colours, normals, texture coordinates after)
OFF_HEADER = re.compile(r"(ST)?C?N?OFF")


def read_modelnet40(source: Path, points: int = 2048, workers: int | None = None, seed: int = 0) -> PreparedDataset:
    source = Path(source)
    if points < 1:
        raise UserError(f"--points {points}: must be at least 1 (the paper uses 2048)")
    check_seed(seed)
    with open_source(source) as (names, _, unread):
        meshes, skipped = _layout(sorted(n for n in names if n.lower().endswith(".off") and not any(is_hidden(p) for p in n.split("/"))))
    skipped = unread + skipped
    if not meshes:
        raise UserError(f"{source}: no OFF meshes found{skipped_example(skipped)}; expected {LAYOUT}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    check_points(points, len(meshes), workers)
    classes = sorted({cls for _, cls, _ in meshes})
    label_of = {cls: i for i, cls in enumerate(classes)}

    tasks = [(path, file_seed(path, seed), points) for _, _, path in meshes]
    per_split = {split: ([], [], []) for split in SPLITS}  # clouds, labels, paths
    for (split, cls, path), (cloud, reason) in zip(meshes, track(_sample_all(source, tasks, workers), f"sampling {source.name}", total=len(tasks))):
        if cloud is None:
            skipped.append({"path": path, "reason": reason})
            continue
        per_split[split][0].append(cloud)
        per_split[split][1].append(label_of[cls])
        per_split[split][2].append(path)
    if not any(clouds for clouds, _, _ in per_split.values()):
        raise UserError(f"{source}: none of the {len(meshes)} meshes could be read "
                        f"(e.g. {skipped[-1]['path']}: {skipped[-1]['reason']}); check the files")

    splits = {split: Split(np.stack(clouds), np.array(labels, dtype=np.int64), {"source_files": paths})
              for split, (clouds, labels, paths) in per_split.items() if clouds}
    return PreparedDataset(
        name="modelnet40",
        classes=classes,
        input_spec={"kind": "points", "shape": [points, 3], "coords": 3, "features": 0, "scaling": "unit-sphere"},
        splits=splits,
        normalization=None,
        source={"kind": "modelnet-off", "path": str(source), "meshes": len(meshes), "points": points, "seed": seed},
        skipped=skipped,
    )


def _layout(paths: list[str]) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """[(split, class, path)] for files in <class>/<split>/ (under any wrapper folders), and the rest as skipped."""
    meshes, skipped = [], []
    for path in paths:
        parts = path.split("/")
        if len(parts) >= 3 and parts[-2].lower() in SPLITS:
            meshes.append((parts[-2].lower(), parts[-3], path))
        else:
            skipped.append({"path": path, "reason": "not in a <class>/train/ or <class>/test/ folder"})
    return meshes, skipped


def file_seed(path: str, seed: int) -> int:
    """A sampling seed from the mesh's path below its class folder, so it does not depend on
    where the data lives, on the order of the files or on the worker that samples it."""
    key = "/".join(path.split("/")[-3:])
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode())]).generate_state(1)[0])


# --- sampling (runs in worker processes) ---------------------------------------------------------

_SOURCE = None  # each worker's open source, kept for the worker's life (a zip is opened once per worker)
_READ = None  # and its reader: path -> bytes


def _open_worker(source: Path) -> None:
    global _SOURCE, _READ
    _SOURCE = open_source(source)  # held here: when the context is collected, the zip closes
    _READ = _SOURCE.__enter__().read


def _sample_all(source: Path, tasks: list, workers: int):
    """(cloud or None, reason) per task, in order."""
    if workers <= 1 or len(tasks) < 2:
        with open_source(source) as (_, read, _):
            for task in tasks:
                yield _read_and_sample(read, *task)
        return
    fork = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    try:
        pool = context.Pool(min(workers, len(tasks)), initializer=_open_worker, initargs=(source,))
    except OSError as exc:  # too many processes for this machine's limits
        raise UserError(f"--workers {workers}: cannot start that many worker processes ({exc.strerror or exc}); "
                        f"give fewer") from None
    with pool:
        yield from pool.imap(_sample_task, tasks, chunksize=4)


def _sample_task(task) -> tuple[np.ndarray | None, str | None]:
    return _read_and_sample(_READ, *task)


def _read_and_sample(read, path: str, seed: int, points: int) -> tuple[np.ndarray | None, str | None]:
    try:
        data = read(path)
    except Unreadable as exc:  # a damaged zip member (bad CRC...) or an unreadable file: skipped like a bad mesh
        return None, str(exc)
    return sample_mesh(data, seed, points)


def parse_triangle_off(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(vertices, faces) of a plain all-triangle OFF file, parsed in bulk; None for anything else.

    trimesh's OFF reader works line by line in Python: 1.2 s for the 1.9 MB airplane_0003.off,
    against ~0.3 s here; ModelNet40's 12,311 files are nearly all plain triangle meshes."""
    if b"#" in data:
        return None
    tokens = data.split()
    if len(tokens) < 4 or tokens[0] != b"OFF" or not (tokens[1].isdigit() and tokens[2].isdigit()):
        return None
    vertices, faces = int(tokens[1]), int(tokens[2])
    if len(tokens) != 4 + 3 * vertices + 4 * faces:
        return None  # polygons other than triangles, or per-face colours
    values = np.array(tokens[4:], dtype=np.float64)
    triangles = values[3 * vertices :].reshape(faces, 4)
    if (triangles[:, 0] != 3).any():
        return None
    return values[: 3 * vertices].reshape(vertices, 3), triangles[:, 1:].astype(np.int64)


def off_problem(data: bytes) -> str | None:
    """Why `data` is not a whole OFF file, read line by line as trimesh does; None when it is.

    trimesh takes the lines it finds: a file cut after 903 of its 1,807 faces would be a mesh
    with half its surface. Here every vertex and face the header counts must be there, in full."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not an OFF file: not text (byte {exc.start} is not UTF-8)"
    if "\0" in text:
        return "not an OFF file: not text (it holds NUL bytes)"
    lines = [tokens for tokens in (line.split("#", 1)[0].split() for line in text.splitlines()) if tokens]
    if not lines or not OFF_HEADER.fullmatch(lines[0][0]):
        return "not an OFF file: no 'OFF' header"
    rest = ([lines[0][1:]] if len(lines[0]) > 1 else []) + lines[1:]  # the counts may follow on the header line
    try:
        vertices, faces = int(rest[0][0]), int(rest[0][1])
    except (IndexError, ValueError):
        return "no vertex and face counts after the 'OFF' header"
    body = rest[1:]
    if len(body) < vertices + faces:
        found = min(len(body), vertices), max(len(body) - vertices, 0)
        return (f"the header says {vertices} vertices and {faces} faces, the file has {found[0]} and {found[1]} "
                f"(cut short?)")
    if len(body) > vertices + faces:
        return f"{len(body) - vertices - faces} line(s) beyond the {vertices} vertices and {faces} faces its header says"
    for i, tokens in enumerate(body[:vertices]):
        if len(tokens) < 3:
            return f"vertex {i} has {len(tokens)} coordinates, not 3"
    for i, tokens in enumerate(body[vertices:]):
        if not tokens[0].isdigit() or len(tokens) - 1 < int(tokens[0]):
            return f"face {i} does not list the vertices it counts ({' '.join(tokens[:8])})"
    return None


def sample_mesh(data: bytes, seed: int, points: int) -> tuple[np.ndarray | None, str | None]:
    """(points x 3 float32 cloud centred at zero inside the unit sphere, None), or (None, why not)."""
    data = MERGED_HEADER.sub(rb"OFF\n\1", data, count=1)
    try:
        plain = parse_triangle_off(data)
        if plain is not None:
            mesh = trimesh.Trimesh(*plain, process=False)
        else:  # comments, colours, polygons...: trimesh's general parser, once the file is known whole
            problem = off_problem(data)
            if problem:
                return None, problem
            mesh = trimesh.load(io.BytesIO(data), file_type="off", force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types on malformed text; a bad file is skipped, not fatal
        return None, f"cannot parse OFF: {exc}" if str(exc) else f"cannot parse OFF: {type(exc).__name__}"
    return sample_surface(mesh, seed, points)


def sample_surface(mesh, seed: int, points: int) -> tuple[np.ndarray | None, str | None]:
    """A parsed mesh's cloud (points x 3 float32, centred, inside the unit sphere), or (None, why not)."""
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        return None, "empty mesh (no vertices or faces)"
    if not np.isfinite(mesh.vertices).all():
        return None, "vertex coordinates are not finite"
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        return None, f"faces refer to vertices that do not exist (the file has {len(mesh.vertices)})"
    if not mesh.area > 0:
        return None, "degenerate mesh (zero surface area)"
    cloud, _ = trimesh.sample.sample_surface(mesh, points, seed=seed)
    cloud = cloud - cloud.mean(axis=0)
    radius = np.linalg.norm(cloud, axis=1).max()
    if not radius > 0:
        return None, "degenerate mesh (all samples at one point)"
    return (cloud / radius).astype(np.float32), None
