"""`perceiver prepare modelnet40` and training on point clouds: OFF fixtures made from trimesh
primitives in the real layout (with the real files' merged header, a corrupt and an empty mesh),
the real sample meshes when present, and the point-cloud augmentations."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from conftest import set_args
from perceiver_cli.data.augment import augment_points, drop_points, rotate_about, subsample_points
from perceiver_cli.data.modelnet40 import MERGED_HEADER, off_problem, parse_triangle_off, read_modelnet40, sample_mesh
from perceiver_cli.recipe import AugmentConfig
from test_cli import assert_user_error

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "modelnet-off" / "ModelNet40-sample"
SHAPES = {
    "box": lambda: trimesh.creation.box(extents=(1.6, 1.6, 1.6)),
    "cone": lambda: trimesh.creation.cone(radius=1.0, height=2.0, sections=24),
    "cylinder": lambda: trimesh.creation.cylinder(radius=0.6, height=2.0, sections=24),
    "sphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=1.0),
}
# a small point model that learns the four shapes in a few seconds on one core
POINT_MODEL = ["model.num_latents=16", "model.latent_dim=64", "model.latent_blocks=1", "model.latent_heads=4",
               "model.cross_attends=1", "model.num_bands=8", "model.max_freq=16", "model.dropout=0",
               "data.num_points=128", "train.batch_size=8", "optim.lr=0.002", "optim.scheduler=constant"]


def off_text(mesh: trimesh.Trimesh, merged_header: bool = False) -> str:
    text = trimesh.exchange.off.export_off(mesh)
    if merged_header:  # the real files' quirk: "OFF<nverts> <nfaces> 0" on the first line
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        text = "OFF" + "\n".join(lines[1:]) + "\n"
    return text


def write_modelnet(root: Path, train: int = 10, test: int = 4, seed: int = 0, extras: bool = True) -> Path:
    """root/ModelNet40/<class>/{train,test}/<class>_NNNN.off: each primitive randomly stretched,
    turned about z and moved; box_0001 with the merged header; plus a corrupt and an empty mesh."""
    rng = np.random.default_rng(seed)
    for name, make in SHAPES.items():
        number = 1
        for split, count in (("train", train), ("test", test)):
            folder = root / "ModelNet40" / name / split
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                mesh = make()
                mesh.apply_scale(rng.uniform(0.8, 1.25, 3))
                mesh.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * math.pi), [0, 0, 1]))
                mesh.apply_translation(rng.normal(0, 3, 3))
                merged = name == "box" and number == 1
                (folder / f"{name}_{number:04d}.off").write_text(off_text(mesh, merged_header=merged))
                number += 1
    if extras:
        (root / "ModelNet40" / "cone" / "train" / "cone_9998.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 zero\n")
        (root / "ModelNet40" / "sphere" / "test" / "sphere_9999.off").write_text("OFF\n0 0 0\n")
    return root / "ModelNet40"


@pytest.fixture(scope="module")
def modelnet(tmp_path_factory) -> Path:
    return write_modelnet(tmp_path_factory.mktemp("modelnet"))


def test_merged_header_mesh_parses_like_the_standard_one():
    mesh = SHAPES["box"]()
    standard, _ = sample_mesh(off_text(mesh).encode(), seed=1, points=64)
    merged, reason = sample_mesh(off_text(mesh, merged_header=True).encode(), seed=1, points=64)
    assert reason is None
    np.testing.assert_array_equal(standard, merged)


def test_bulk_parser_reads_what_trimesh_reads_and_leaves_the_rest_to_it():
    import io
    for name, make in SHAPES.items():
        data = off_text(make()).encode()
        vertices, faces = parse_triangle_off(data)
        mesh = trimesh.load(io.BytesIO(data), file_type="off", force="mesh", process=False)
        np.testing.assert_array_equal(vertices, mesh.vertices)
        np.testing.assert_array_equal(faces, mesh.faces)
    quad = b"OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"
    assert parse_triangle_off(quad) is None
    cloud, reason = sample_mesh(quad, seed=0, points=100)  # trimesh triangulates the quad
    assert reason is None and cloud.shape == (100, 3)
    assert parse_triangle_off(b"OFF\n# made by hand\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n") is None


def cut_after_faces(text: str, faces: int) -> str:
    """The file cut at a line boundary after `faces` of its faces (a copy or download that stopped)."""
    lines = text.splitlines(keepends=True)
    vertices = int(lines[1].split()[0])
    return "".join(lines[: 2 + vertices + faces])


def test_an_off_file_cut_short_is_a_skipped_mesh_with_the_reason():
    sphere = off_text(SHAPES["sphere"]())  # 162 vertices, 320 faces
    for text in (cut_after_faces(sphere, 160), "# a comment\n" + cut_after_faces(sphere, 160)):
        cloud, reason = sample_mesh(text.encode(), seed=0, points=64)
        assert cloud is None and reason == "the header says 162 vertices and 320 faces, the file has 162 and 160 (cut short?)"
    in_the_vertices = "".join(sphere.splitlines(keepends=True)[: 2 + 72])
    cloud, reason = sample_mesh(in_the_vertices.encode(), seed=0, points=64)
    assert cloud is None and "the file has 72 and 0" in reason
    mid_line = sphere.rstrip("\n").rsplit(" ", 1)[0] + "\n"  # the last face lost its last vertex
    cloud, reason = sample_mesh(mid_line.encode(), seed=0, points=64)
    assert cloud is None and reason.startswith("face 319 does not list the vertices it counts")
    quads = b"OFF\n4 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"  # polygons: trimesh's path
    cloud, reason = sample_mesh(quads, seed=0, points=64)
    assert cloud is None and "4 vertices and 2 faces, the file has 4 and 1" in reason
    cloud, reason = sample_mesh(sphere.encode() + b"3 0 1 2\n", seed=0, points=64)
    assert cloud is None and reason == "1 line(s) beyond the 162 vertices and 320 faces its header says"


def test_files_that_are_not_off_text_say_so():
    rng = np.random.default_rng(0)
    cloud, reason = sample_mesh(rng.bytes(4096), seed=0, points=64)
    assert cloud is None and reason.startswith("not an OFF file: not text")
    assert sample_mesh(b"ply\nformat ascii 1.0\nelement vertex 3\n", 0, 64)[1] == "not an OFF file: no 'OFF' header"
    assert sample_mesh(b"OFF\n\x00\x00\n", 0, 64)[1] == "not an OFF file: not text (it holds NUL bytes)"
    assert sample_mesh(b"OFF\nmany faces\n", 0, 64)[1] == "no vertex and face counts after the 'OFF' header"


@pytest.mark.skipif(not SHARED_SAMPLE.is_dir(), reason="../shared/data/modelnet-off not present")
def test_a_real_mesh_cut_after_903_of_its_1807_faces_is_skipped():
    text = (SHARED_SAMPLE / "bed" / "train" / "bed_0001.off").read_text()
    cloud, reason = sample_mesh(cut_after_faces(text, 903).encode(), seed=0, points=64)
    assert cloud is None and reason == "the header says 2095 vertices and 1807 faces, the file has 2095 and 903 (cut short?)"


def test_a_damaged_zip_member_is_a_skipped_mesh_not_a_crash(tmp_path):
    archive = tmp_path / "ModelNet40.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in ("box", "cone"):
            for i in range(2):
                zf.writestr(f"ModelNet40/{name}/train/{name}_{i:04d}.off", off_text(SHAPES[name]()))
    data = bytearray(archive.read_bytes())
    data[data.find(b"OFF\n") + 20] ^= 0xFF  # box_0000's bytes no longer match its CRC
    archive.write_bytes(bytes(data))
    for workers in (1, 2):
        dataset = read_modelnet40(archive, points=16, workers=workers)
        assert [(item["path"], item["reason"][:26]) for item in dataset.skipped] == \
            [("ModelNet40/box/train/box_0000.off", "damaged in the zip (Bad CR")]
        assert len(dataset.splits["train"].y) == 3


def test_clouds_are_centred_inside_the_unit_sphere_and_on_the_surface():
    mesh = SHAPES["box"]()
    mesh.apply_translation([5, -2, 7])
    cloud, _ = sample_mesh(off_text(mesh).encode(), seed=0, points=500)
    assert cloud.shape == (500, 3) and cloud.dtype == np.float32
    np.testing.assert_allclose(cloud.mean(0), 0, atol=1e-5)
    assert np.linalg.norm(cloud, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    # a box's surface points lie on its faces: one coordinate at the extreme of its axis
    on_face = np.isclose(np.abs(cloud - (cloud.max(0) + cloud.min(0)) / 2), (cloud.max(0) - cloud.min(0)) / 2, atol=1e-5).any(1)
    assert on_face.all()


def test_area_weighted_sampling_puts_points_where_the_area_is():
    # two unit squares apart, one scaled 3x: it has 9x the area, so ~90 % of the points
    small = trimesh.creation.box(extents=(1, 1, 0.001))
    large = trimesh.creation.box(extents=(3, 3, 0.001))
    large.apply_translation([10, 0, 0])
    both = trimesh.util.concatenate([small, large])
    cloud, _ = sample_mesh(off_text(both).encode(), seed=0, points=4000)
    x = cloud[:, 0]
    share_large = (x > (x.min() + x.max()) / 2).mean()
    assert 0.87 < share_large < 0.93


def test_prepare_reads_the_layout_skips_bad_meshes_and_names_them(cli, workdir, modelnet):
    result = cli("prepare", "modelnet40", "--from", modelnet, "--points", 256, "--workers", 2)
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "data" / "modelnet40" / "manifest.json").read_text())
    assert manifest["classes"] == ["box", "cone", "cylinder", "sphere"]
    assert manifest["splits"]["train"]["count"] == 40 and manifest["splits"]["test"]["count"] == 16
    assert manifest["splits"]["train"]["class_counts"] == {"box": 10, "cone": 10, "cylinder": 10, "sphere": 10}
    assert manifest["input"] == {"kind": "points", "shape": [256, 3], "coords": 3, "features": 0, "scaling": "unit-sphere"}
    skipped = {Path(item["path"]).name: item["reason"] for item in manifest["skipped"]}
    assert set(skipped) == {"cone_9998.off", "sphere_9999.off"}
    assert "empty" in skipped["sphere_9999.off"]
    assert "box_0001.off" in json.dumps(manifest["splits"]["train"]["source_files"])  # the merged header was read
    assert "skipped 2 input(s)" in result.stderr and "cone_9998.off" in result.stderr
    x = np.load(workdir / "data" / "modelnet40" / "train_x.npy")
    assert x.shape == (40, 256, 3) and x.dtype == np.float32


def test_prepare_is_deterministic_across_reruns_workers_and_zip(cli, workdir, modelnet, tmp_path):
    assert cli("prepare", "modelnet40", "--from", modelnet, "--points", 64, "--workers", 2, "--out", "a").exit_code == 0
    assert cli("prepare", "modelnet40", "--from", modelnet, "--points", 64, "--workers", 1, "--out", "b").exit_code == 0
    archive = tmp_path / "ModelNet40.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(modelnet.rglob("*.off")):
            zf.write(path, path.relative_to(modelnet.parent).as_posix())
    assert cli("prepare", "modelnet40", "--from", archive, "--points", 64, "--out", "c").exit_code == 0
    for split in ("train", "test"):
        a, b, c = (json.loads((workdir / d / "manifest.json").read_text())["splits"][split]["sha256"] for d in "abc")
        assert a == b == c
    # a different seed samples different points
    assert cli("prepare", "modelnet40", "--from", modelnet, "--points", 64, "--seed", 1, "--out", "d").exit_code == 0
    assert not np.array_equal(np.load(workdir / "a" / "train_x.npy"), np.load(workdir / "d" / "train_x.npy"))


def test_prepare_without_meshes_is_one_clear_line(cli, workdir, tmp_path):
    (tmp_path / "empty" / "chair").mkdir(parents=True)
    line = assert_user_error(cli("prepare", "modelnet40", "--from", tmp_path / "empty"))
    assert "no OFF meshes found" in line and "<class>/train/*.off" in line
    assert not (workdir / "data" / "modelnet40").exists()


def test_points_whose_clouds_cannot_fit_and_a_negative_seed_are_one_line_before_sampling(cli, workdir, modelnet, monkeypatch):
    import perceiver_cli.data.modelnet40 as modelnet40

    def sampled(*args):  # a regression must not sample 10^12 points: it fails here instead
        raise AssertionError("sampled a mesh")

    monkeypatch.setattr(modelnet40, "sample_mesh", sampled)
    line = assert_user_error(cli("prepare", "modelnet40", "--from", modelnet, "--points", 10**12, "--workers", 1))
    assert line.startswith("error: --points 1,000,000,000,000: 58 meshes of 1,000,000,000,000 points would need at least")
    assert "give fewer --points (about" in line
    line = assert_user_error(cli("prepare", "modelnet40", "--from", modelnet, "--seed", -1, "--workers", 1))
    assert line == "error: --seed -1: must be 0 or more"
    assert not (workdir / "data").exists()


def test_points_option_is_refused_for_other_datasets(cli, workdir):
    line = assert_user_error(cli("prepare", "digits", "--points", 128))
    assert "--points applies to `prepare modelnet40` only" in line


def test_training_on_prepared_point_clouds_learns_the_shapes(cli, workdir, modelnet):
    assert cli("prepare", "modelnet40", "--from", modelnet, "--points", 256).exit_code == 0
    overrides = POINT_MODEL + ["train.epochs=12", "data.augment.point_scale=[0.99, 1.01]", "data.augment.rotate=true",
                               "data.point_scaling=cube"]
    result = cli("train", "modelnet40", *set_args(overrides))
    assert result.exit_code == 0, result.output
    result = cli("eval", "runs/modelnet40")
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "runs" / "modelnet40" / "eval_test.json").read_text())
    assert report["samples"] == 16
    assert report["accuracy"] >= 0.6, report["accuracy"]  # chance: 0.25


@pytest.mark.skipif(not SHARED_SAMPLE.is_dir(), reason="../shared/data/modelnet-off not present")
def test_the_real_sample_meshes_all_prepare():
    dataset = read_modelnet40(SHARED_SAMPLE, points=512, workers=2)
    assert dataset.skipped == []
    assert dataset.classes == ["airplane", "bathtub", "bed"]
    assert list(np.bincount(dataset.splits["train"].y)) == [1, 5, 3]
    names = [Path(p).name for p in dataset.splits["train"].extra["source_files"]]
    assert {"bathtub_0001.off", "bathtub_0002.off", "bathtub_0003.off"} <= set(names)  # the merged headers
    x = dataset.splits["train"].x
    assert x.shape == (9, 512, 3) and np.isfinite(x).all()
    for path in SHARED_SAMPLE.rglob("*.off"):  # all plain triangle meshes: the bulk parser reads them
        data = MERGED_HEADER.sub(rb"OFF\n\1", path.read_bytes(), count=1)
        assert parse_triangle_off(data) is not None
        assert off_problem(data) is None  # and the checks of the general path find them whole
    np.testing.assert_allclose(np.linalg.norm(x, axis=2).max(1), 1.0, atol=1e-6)


# --- augmentations ---------------------------------------------------------------------------------

def clouds(batch=4, points=100, seed=0) -> torch.Tensor:
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))


def test_rotation_turns_about_the_up_axis_only():
    x = clouds()
    turned = rotate_about(x, "z", torch.Generator().manual_seed(0))
    torch.testing.assert_close(turned[..., 2], x[..., 2])
    torch.testing.assert_close(turned[..., :2].norm(dim=-1), x[..., :2].norm(dim=-1))
    assert not torch.allclose(turned, x)


def test_point_scale_stays_within_its_range_per_point():
    x = clouds()
    config = AugmentConfig(point_scale=(0.99, 1.01))
    out = augment_points(x, config, torch.Generator().manual_seed(0))
    ratio = out.norm(dim=-1) / x.norm(dim=-1)
    assert ratio.min() >= 0.99 - 1e-6 and ratio.max() <= 1.01 + 1e-6
    assert ratio.std() > 0  # one factor per point, not one per cloud


def test_dropout_and_subsampling_only_reuse_the_clouds_own_points():
    x = clouds(points=50)
    generator = torch.Generator().manual_seed(0)
    for out in (drop_points(x, 0.8, generator), subsample_points(x, 20, generator)):
        for cloud, original in zip(out, x):
            # every output point is one of the input points of the same cloud
            distance = torch.cdist(cloud, original, compute_mode="donot_use_mm_for_euclid_dist")
            assert (distance.min(dim=1).values < 1e-6).all()
    assert drop_points(x, 0.8, generator).shape == x.shape
    assert subsample_points(x, 20, generator).shape == (4, 20, 3)


def test_point_augmentation_is_reproducible_and_off_by_default():
    x = clouds()
    config = AugmentConfig(rotate=True, translate=0.1, jitter=0.01, point_dropout=0.2, point_scale=(0.9, 1.1))
    a = augment_points(x, config, torch.Generator().manual_seed(5))
    b = augment_points(x, config, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(augment_points(x, AugmentConfig(), torch.Generator()), x)
