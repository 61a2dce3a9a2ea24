"""Tests of the Kaizen engine: model, patches, decomposition loop, errors, accuracy.

Fast parts use tiny images, a random VQ-VAE or a hand-made "disc" predictor; the
accuracy checks use the bundled weights on small held-out synthetic images (seeds
>= 10,000 and settings the training never drew).
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_kaizen import run_to_end  # noqa: E402
from napari_kaizen.data.synthetic import SynthParams, synthesize  # noqa: E402
from napari_kaizen.engines import get_engine  # noqa: E402
from napari_kaizen.engines._common import InputError, InputWarning, WeightsError  # noqa: E402
from napari_kaizen.engines._common.normalize import prepare_image  # noqa: E402
from napari_kaizen.engines.kaizen import (  # noqa: E402
    DEFAULT_MODEL,
    DecompositionSnapshot,
    KaizenParams,
    KaizenVQVAE,
    PatchSampler,
    add_train_arguments,
    decompose,
    load_model,
    run_train,
    segment,
    train,
)
from napari_kaizen.engines.kaizen.decompose import greedy_points, judge, patch_index  # noqa: E402
from napari_kaizen.engines.kaizen.model import EMACodebook  # noqa: E402
from napari_kaizen.errors import OverwriteError  # noqa: E402
from napari_kaizen.metrics import evaluate  # noqa: E402

#: The held-out dense set: settings training never drew, seeds >= 10,000.
DENSE = SynthParams(shape=(160, 160), nucleus_diameter=18.0, density=0.45, touching=0.9, clustering=0.8)


# --------------------------------------------------------------------------- helpers


class DiscNet(torch.nn.Module):
    """A stand-in for a trained VQ-VAE: ``gain`` times the input times the mask of the
    bright blob (above ``level``) touching the centre pixel. With ``gain=1`` on
    separated objects it is perfect (it returns the training target); otherwise it
    leaves remainders, rejections and later passes, like a real model."""

    def __init__(self, patch: int = 40, level: float = 0.05, gain: float = 1.0) -> None:
        super().__init__()
        self.config = type("C", (), {"patch_size": patch})()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.level, self.gain = level, gain

    @torch.no_grad()
    def predict(self, x):
        from scipy import ndimage as ndi

        out = torch.zeros_like(x)
        c = x.shape[-1] // 2
        for i, patch in enumerate(x[:, 0].cpu().numpy()):
            comps, _ = ndi.label(patch > self.level)
            if comps[c, c]:
                out[i, 0] = self.gain * x[i, 0] * torch.from_numpy(comps == comps[c, c]).to(x)
        return out


def disc_image(shape=(120, 120), centres=((30, 30), (30, 80), (85, 40), (90, 95)), radius=7.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(centres, start=1):
        inside = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        img[inside] = 0.5 + 0.1 * i
        labels[inside] = i
    return img, labels


@pytest.fixture(scope="module")
def bundled():
    return load_model(DEFAULT_MODEL, device="cpu")


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return KaizenVQVAE(patch_size=40).eval()


# --------------------------------------------------------------------------- model


def test_model_shapes_and_config():
    net = KaizenVQVAE(patch_size=48).eval()
    recon, commitment, codes = net(torch.zeros(3, 1, 48, 48))
    assert recon.shape == (3, 1, 48, 48)
    assert codes.shape == (3, 6, 6) and codes.dtype == torch.int64
    assert commitment.ndim == 0
    assert net.codebook.embedding.shape == (128, net.config.embedding_dim)
    with pytest.raises(ValueError, match="multiple of 8"):
        KaizenVQVAE(patch_size=42)


def test_ema_codebook_moves_codes_to_data_means_only_in_training():
    torch.manual_seed(0)
    book = EMACodebook(num_embeddings=4, embedding_dim=2, commitment_cost=0.25, decay=0.9)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    book.train()
    for _ in range(200):
        z = (centres[torch.randint(0, 4, (256,))] + 0.05 * torch.randn(256, 2)).T.reshape(1, 2, 16, 16)
        book(z)
    # Every centre has a code next to it (EMA means of the assigned vectors).
    dist = torch.cdist(centres, book.embedding).min(1).values
    assert float(dist.max()) < 0.2
    before = book.embedding.clone()
    book.eval()
    z = torch.randn(1, 2, 8, 8, requires_grad=True)
    z_q, commitment, codes = book(z)
    assert torch.equal(before, book.embedding)  # no update outside training
    quant = book.embedding[codes.view(-1)].view(1, 8, 8, 2).permute(0, 3, 1, 2)
    assert torch.allclose(z_q, quant, atol=1e-5)  # straight-through: values of the codes
    assert torch.allclose(commitment, 0.25 * ((z - quant) ** 2).mean())
    (z_q.sum() + commitment).backward()  # straight-through: the encoder gets a gradient
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- patches


def test_patch_sampler_split_and_targets():
    # Each cell has its own constant brightness, so "input x mask of the centre cell"
    # can be checked pixel by pixel.
    img, labels = disc_image((100, 100), centres=((20, 20), (22, 40), (60, 60), (80, 25), (50, 85)), radius=9)
    sampler = PatchSampler([img], [labels], patch_size=40, rng=np.random.default_rng(3), residual_prob=0.0,
                           gain_range=(1.0, 1.0))
    n_pos = 0
    n = 1500
    for _ in range(n):
        x, t, has = sampler.sample()
        assert x.shape == t.shape == (40, 40)
        centre = x[20, 20]
        if has:
            n_pos += 1
            assert centre > 0 and t[20, 20] == centre
            # Target = input where the input shows the centre cell, zero elsewhere.
            assert np.array_equal(t != 0, x == centre)
            assert np.array_equal(t[t != 0], x[t != 0])
        else:
            assert not t.any()
            assert centre == 0
    assert abs(n_pos / n - 0.8) < 0.04


def test_patch_sampler_refuses_bad_pairs():
    img, labels = disc_image((50, 50), centres=((20, 20),))
    with pytest.raises(InputError, match="pair"):
        PatchSampler([img, img], [labels])
    with pytest.raises(InputError, match="no cells"):
        PatchSampler([img], [np.zeros_like(labels)])


# --------------------------------------------------------------------------- decomposition


@pytest.mark.parametrize("sparse_max", [0, 50_000], ids=["image-wide rounds", "candidates one by one"])
def test_greedy_points_sequential_equals_parallel(monkeypatch, sparse_max):
    import importlib

    dec = importlib.import_module("napari_kaizen.engines.kaizen.decompose")

    # Both parallel ways: rounds of max filters over the image, and the host walk over
    # ranked candidates that serves fields with few candidates.
    monkeypatch.setattr(dec, "SPARSE_GREEDY_MAX", sparse_max)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        s = torch.randint(0, 4, (40, 50), generator=gen).float()  # many ties on purpose
        s[torch.rand(40, 50, generator=gen) < 0.3] = -float("inf")
        for r in (1, 4, 39):
            a = greedy_points(s, r, None, parallel=False)
            b = greedy_points(s, r, None, parallel=True)
            assert torch.equal(a, b)
            assert torch.equal(greedy_points(s, r, 5, parallel=True), a[:5])
            if len(a) > 1:  # chosen points are more than r apart
                d = (a[:, None, :] - a[None, :, :]).abs().max(-1).values
                assert int(d[~torch.eye(len(a), dtype=bool)].min()) > r


def test_judge_batched_equals_sequential_for_disjoint_patches():
    gen = torch.Generator().manual_seed(2)
    p, width = 8, 64
    error = torch.rand(width * width, generator=gen) - 0.3
    pts = torch.tensor([[0, 0], [0, 16], [20, 3], [40, 40], [50, 10], [9, 30]])  # disjoint 8x8 patches
    index = patch_index(pts, p, width).reshape(len(pts), -1)
    cells = torch.rand(len(pts), p * p, generator=gen) * torch.tensor([0.2, 1.0, 0.1, 0.5, 2.0, 0.3])[:, None]
    acc_b, gain_b = judge(error[index], cells, 0.05, 3, sequential=False)
    err_s = error.clone()
    acc_s, gain_s = judge(None, cells, 0.05, 3, sequential=True, index=index, error=err_s)
    assert torch.equal(acc_b, acc_s)
    assert torch.allclose(gain_b, gain_s)
    assert acc_b.any() and not acc_b.all()  # the case is not trivial
    err_b = error.clone()
    err_b.index_put_((index[acc_b].reshape(-1),), -cells[acc_b].reshape(-1), accumulate=True)
    assert torch.equal(err_b, err_s)


def test_decompose_finds_discs_and_keeps_invariants():
    img, labels = disc_image()
    gen = decompose(img, DiscNet(), KaizenParams(batched=False, points_per_iteration=3))
    snaps = list(gen)
    assert all(isinstance(s, DecompositionSnapshot) for s in snaps)
    final = snaps[-1]
    assert final.done and not any(s.done for s in snaps[:-1])
    assert final.labels.dtype == np.int32 and final.labels.max() == 4
    assert evaluate([labels], [final.labels]).ap[0.9] == 1.0
    # The error only goes down, and only accepted cells (with positive gain) changed it.
    l1 = [s.error_l1 for s in snaps]
    assert all(b <= a + 1e-7 for a, b in zip(l1, l1[1:]))
    for s in snaps[:-1]:
        assert s.accepted.shape == (len(s.proposals),) == s.gains.shape
        assert (s.gains[s.accepted] > 0).all()
        assert set(s.new_labels) <= set(np.unique(s.labels).tolist())
    # A yielded snapshot never changes afterwards (its labels are no view of the state).
    seen = [(s, s.labels.copy()) for s in decompose(img, DiscNet(), KaizenParams(batched=False, points_per_iteration=3))]
    assert all(np.array_equal(s.labels, at_yield) for s, at_yield in seen)
    assert not np.array_equal(seen[0][1], final.labels)
    # Internal + error rebuild the input exactly.
    assert np.allclose(final.internal + final.error, img, atol=1e-6)
    assert set(final.maps) == {"internal", "error"}
    assert sorted(final.scores) == [1, 2, 3, 4] and all(0 < v <= 1 + 1e-6 for v in final.scores.values())


def test_decompose_invariants_on_dense_nuclei():
    field = synthesize(DENSE, seed=10_050, shape=(96, 96))
    img = prepare_image(field.nuclei)
    params = KaizenParams(batched=False, max_iterations=6, max_passes=3)
    tabu = params.windows(40)[2]
    snaps = list(decompose(img, DiscNet(level=0.25, gain=0.9), params))
    assert sum(s.accepted.sum() for s in snaps) > 5 and sum((~s.accepted).sum() for s in snaps) > 0
    l1 = [s.error_l1 for s in snaps]
    assert all(b <= a + 1e-6 for a, b in zip(l1, l1[1:]))
    by_pass: dict[int, list[np.ndarray]] = {}
    for s in snaps[:-1]:
        if len(s.proposals):
            by_pass.setdefault(s.pass_index, []).append(s.proposals)
    assert by_pass
    for pts in by_pass.values():
        # No point is proposed again in its pass, nor one next to it.
        seen = np.zeros((0, 2))
        for batch in pts:
            if len(seen):
                d = np.abs(batch[:, None, :] - seen[None, :, :]).max(-1)
                assert d.min() > tabu
            seen = np.concatenate([seen, batch])


def test_batched_loop_equals_sequential_loop_when_patches_do_not_overlap():
    field = synthesize(DENSE, seed=10_051, shape=(120, 120))
    img = prepare_image(field.nuclei)
    # Same N for both, so that both end passes by the same rule.
    common = dict(max_iterations=8, max_passes=2, points_per_iteration=10_000)
    net = DiscNet(level=0.25, gain=0.9)
    batched = run_to_end(decompose(img, net, KaizenParams(batched=True, **common)))
    seq = run_to_end(decompose(img, net, KaizenParams(batched=False, suppression_radius=39, **common)))
    assert batched.iteration == seq.iteration and batched.n_cells == seq.n_cells > 0
    assert np.array_equal(batched.labels, seq.labels)
    assert np.allclose(batched.internal, seq.internal, atol=1e-6)


def test_closing_the_generator_stops_the_run(random_net):
    img = prepare_image(synthesize(DENSE, seed=10_052, shape=(96, 96)).nuclei)
    gen = segment(img, KaizenParams(batched=False), model=random_net, device="cpu")
    first = next(gen)
    assert first.stage == "iteration" and first.iteration == 1
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


def test_snapshots_on_input_grid_when_rescaled(random_net):
    img = prepare_image(synthesize(DENSE, seed=10_053, shape=(64, 80)).nuclei)
    km = load_model(random_net)
    km.metadata["object_diameter"] = 9.0  # half the image's nuclei: the work grid is half size
    snaps = list(segment(img, KaizenParams(diameter=18.0, max_iterations=3, max_passes=1), model=km, device="cpu"))
    for s in snaps:
        assert s.labels.shape == (64, 80)
        assert s.internal.shape == (64, 80) and s.error.dtype == np.float32
        if len(s.proposals):
            assert s.proposals[:, 0].max() < 64 and s.proposals[:, 1].max() < 80


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((40, 40, 3), np.uint8) + np.arange(3, dtype=np.uint8), "RGB"),
        (np.random.default_rng(0).random((4, 40, 40)), "stack"),
        (np.full((40, 40), 7.0), "constant"),
        (np.full((40, 40), np.nan), "finite"),
        (np.ones((5, 40)), "too small"),
    ],
)
def test_bad_images_give_one_line_errors(image, match, random_net):
    with pytest.raises(InputError, match=match) as info:
        next(segment(image, model=random_net, device="cpu"))
    assert "\n" not in str(info.value)


def test_bad_params_and_models(random_net, tmp_path):
    with pytest.raises(InputError, match="multiple of 8"):
        KaizenParams(patch_size=30)
    with pytest.raises(InputError, match="points_per_iteration"):
        KaizenParams(points_per_iteration=0)
    img = np.random.default_rng(0).random((48, 48))
    with pytest.raises(InputError, match="patch"):
        next(segment(img, KaizenParams(patch_size=48), model=random_net, device="cpu"))
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="no bundled model"):
        load_model("bundled:no_such_model")
    with pytest.raises(WeightsError):
        load_model(12345)


def test_mismatched_weights_files(tmp_path):
    from napari_kaizen.engines._common.weights import bundled_dir

    src = bundled_dir() / "kaizen_nuclei"
    for suffix in (".safetensors", ".json"):
        shutil.copy(src.with_suffix(suffix), tmp_path / f"a{suffix}")
    # A JSON that belongs to other tensors.
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(WeightsError, match="checksum|does not match"):
        load_model(tmp_path / "a")
    # A JSON for another architecture.
    shutil.copy(src.with_suffix(".safetensors"), tmp_path / "b.safetensors")
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["architecture"] = "unet"
    (tmp_path / "b.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="kaizen-vqvae"):
        load_model(tmp_path / "b")
    # A config that does not fit the tensors.
    shutil.copy(src.with_suffix(".safetensors"), tmp_path / "c.safetensors")
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["config"]["hidden_channels"] = 96
    (tmp_path / "c.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not fit"):
        load_model(tmp_path / "c")


# --------------------------------------------------------------------------- protocol, training


def test_registry_and_small_images(bundled):
    engine = get_engine("kaizen")
    assert engine.params_class is KaizenParams and engine.default_model == "bundled:kaizen_nuclei"
    field = synthesize(DENSE, seed=10_060, shape=(24, 30))  # smaller than a patch
    # Too few whole nuclei to measure: 'auto' falls back to the model's scale and says so.
    with pytest.warns(InputWarning, match="could not estimate the object diameter"):
        last = run_to_end(engine.segment(field.nuclei, model=bundled, device="cpu"))
    assert last.done and last.labels.shape == (24, 30) and last.labels.dtype == np.int32
    ids = np.unique(last.labels)
    assert np.array_equal(ids[1:], np.arange(1, len(ids)))


def test_train_writes_loadable_weights_and_cli_hook(tmp_path, capsys):
    img, labels = disc_image((80, 80), centres=((20, 20), (25, 50), (60, 40)), radius=8)
    snaps = list(train([img], [labels], output=tmp_path / "tiny", steps=3, batch_size=4, report_every=1,
                       validate_every=0, config={"hidden_channels": 16, "first_channels": 8,
                                                 "residual_channels": 4}))
    assert snaps[-1].done and snaps[-1].weights_path.exists()
    assert any(s.step == 2 and np.isfinite(s.loss) for s in snaps)
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["architecture"] == "kaizen-vqvae" and meta["patch_size"] == 40
    assert meta["normalization"] == {"percentiles": [1.0, 99.8]}
    assert abs(meta["object_diameter"] - np.median([2 * np.sqrt((labels == i).sum() / np.pi) for i in (1, 2, 3)])) < 1e-6
    assert {"reproduce", "steps", "seed", "learning_rate", "data"} <= set(meta["training"])
    km = load_model(tmp_path / "tiny", device="cpu")
    assert km.patch_size == 40 and km.net.config.hidden_channels == 16
    # The CLI hook, with files.
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "lab.npy", labels)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--images", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"),
                              "--output", str(tmp_path / "cli"), "--steps", "2", "--batch-size", "2"])
    assert run_train(args) == 0
    assert (tmp_path / "cli.safetensors").exists() and "wrote" in capsys.readouterr().out
    with pytest.raises(OverwriteError, match="already exists"):
        run_train(args)


# --------------------------------------------------------------------------- accuracy (bundled weights)


def _kaizen_vs_classical(fields, params, model):
    from napari_kaizen.engines import classical

    gts = [f.nucleus_labels for f in fields]
    kz = evaluate(gts, [run_to_end(segment(f.nuclei, params, model=model, device="cpu")).labels for f in fields])
    cl = evaluate(gts, [run_to_end(classical.segment(f.nuclei)).labels for f in fields])
    return kz, cl


@pytest.mark.parametrize("outline", ["model", "image"])
def test_accuracy_on_held_out_dense_nuclei(bundled, outline):
    """The paper's masks on dense synthetic nuclei, and the default image outlines.

    The image outlines merge touching nuclei with no dark seam between them, which
    the synthetic dense fields often draw (real pressed nuclei show one): there they
    lose some AP50 against the model's masks and must still beat the classical engine.
    Their constants are calibrated on seven real sources, whose annotators outline
    tighter (``edge_level`` 0.35) than the generator draws (0.2), and four of the
    VQ-VAE's synthetic training fields: measured here AP50 0.781 / mAP 0.475 against
    the classical engine's 0.540 / 0.422 (0.789 / 0.517 with ``edge_level`` 0.3; 0.767 /
    0.483 with the constants of the real sources alone; 0.822 / 0.536 with those of one
    lab's folders, which lost 0.03-0.05 mAP on each unseen DSB2018 source).
    """
    fields = [synthesize(DENSE, seed=s) for s in (10_000, 10_001)]
    kz, cl = _kaizen_vs_classical(fields, KaizenParams(outline=outline), bundled)
    print(f"\n{outline}: kaizen AP50 {kz.ap50:.3f} mAP {kz.map:.3f} | classical AP50 {cl.ap50:.3f} mAP {cl.map:.3f}")
    if outline == "model":
        assert kz.ap50 >= 0.85 and kz.map - cl.map >= 0.10
    else:
        assert kz.ap50 >= 0.72 and kz.ap50 - cl.ap50 >= 0.15 and kz.map - cl.map >= 0.04


def test_accuracy_holds_on_twice_larger_nuclei_with_diameter(bundled):
    big = SynthParams(shape=(320, 320), nucleus_diameter=36.0, density=0.45, touching=0.9, clustering=0.8)
    fields = [synthesize(big, seed=10_100)]
    kz, cl = _kaizen_vs_classical(fields, KaizenParams(diameter=36.0, outline="model"), bundled)
    print(f"\n2x: kaizen AP50 {kz.ap50:.3f} mAP {kz.map:.3f} | classical AP50 {cl.ap50:.3f} mAP {cl.map:.3f}")
    assert kz.ap50 >= 0.85
    # The default image outlines (constants calibrated on seven real sources) merge some
    # of the generator's seamless pressed pairs, outline tighter than it draws and drop
    # its dimmest nuclei (3-6x dimmer than the rest). Here that measured AP50 0.739 /
    # mAP 0.522 against the classical engine's 0.604 / 0.421 (with one lab's constants
    # 0.688 / 0.519): ahead in both.
    kz_img, _ = _kaizen_vs_classical(fields, KaizenParams(diameter=36.0), bundled)
    assert kz_img.ap50 > cl.ap50 and kz_img.map - cl.map >= 0.05
