"""The mask-conditioned defect GAN: the generator's contract, a short fit
that keeps the background, exact resume, and synthesised strips that the
data layer reads back with their masks (training only)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.config import ConfigError, load_config
from core.gan_config import load_gan_config
from datasets.severstal import Annotations
from models.gan import (
    DefectGenerator,
    PatchDiscriminator,
    discriminator_loss,
    erase,
    generator_adv_loss,
    logit_weights,
    standardise,
)
from training.data import build_train_dataset, load_run_data
from training.gan import GanTrainer, synthesize, train_gan, training_patches

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
NO_AUGMENT = [f"--augment.{k}=0" for k in ("hflip", "vflip", "brightness_contrast", "gamma", "noise", "blur", "affine")]


def gan_config(data, out, *overrides):
    return load_gan_config(overrides=[
        f"--data.root={data}", f"--output_dir={out}", "--data.folds=3", f"--data.split_file={out.parent / 'folds.csv'}",
        "--model.patch=32", "--model.base_channels=8", "--model.disc_channels=8", "--train.batch_size=4",
        "--train.classes=[3]", "--train.device=cpu", "--train.amp=off", "--wandb.mode=disabled",
        "--train.log_every=2", "--train.sample_every=1000", *overrides])


def test_generator_output_has_input_shape_and_range_and_starts_as_identity_outside_mask():
    torch.manual_seed(0)
    generator = DefectGenerator(base=8)
    image = torch.rand(2, 1, 32, 48)
    mask = torch.zeros(2, 1, 32, 48)
    mask[:, :, 8:20, 10:30] = 1
    out = generator(image, mask, torch.tensor([1, 4]), torch.randn(2, 1, 32, 48))
    assert out.shape == image.shape and out.dtype == torch.float32
    out = out.detach()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    outside = mask == 0
    torch.testing.assert_close(out[outside], image[outside])  # the last conv starts at zero
    # inside, an untrained generator returns the erased fill: the mean of the unmasked pixels
    torch.testing.assert_close(out, erase(image, mask))
    logits = PatchDiscriminator(8)(image, mask, torch.tensor([1, 4]))
    assert logits.shape == (2, 1, 4, 6)


def test_short_fit_keeps_pixels_outside_the_mask(tiny_data, tmp_path):
    cfg = gan_config(tiny_data, tmp_path / "gan", "--train.steps=30", "--train.checkpoint_every=30")
    trainer = train_gan(cfg, verbose=False)
    assert trainer.step == 30
    rng = np.random.default_rng(123)
    batch = trainer.patches.batch(rng, 8, [3])
    image, mask = torch.from_numpy(batch["image"]), torch.from_numpy(batch["mask"])
    trainer.generator.eval()
    with torch.no_grad():
        out = trainer.generator(image, mask, torch.from_numpy(batch["class_ids"]), torch.from_numpy(batch["noise"]))
    assert out.shape == image.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    outside = (mask == 0) & (image > 0.05)  # steel, not the black off-strip border
    error = (out - image).abs()[outside]
    assert float(error.mean()) < 0.03 and float(error.quantile(0.99)) < 0.15
    # it learnt something: the generator moved away from its identity start inside the mask
    assert float((out - erase(image, mask)).abs()[mask == 1].mean()) > 1e-3
    lines = [json.loads(l) for l in (tmp_path / "gan" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(2, 31, 2))
    assert (tmp_path / "gan" / "samples" / "step000030.png").is_file()


def test_gan_learns_and_paints_only_training_fold_shapes_and_backgrounds(tiny_data, tmp_path):
    """Real patches, shapes to paint and defect-free backgrounds all come
    from the training strips of the fold, never from its validation strips."""
    cfg = gan_config(tiny_data, tmp_path / "gan", "--train.classes=[1,2,3,4]")
    patches = training_patches(cfg)
    data = load_run_data(cfg)
    assert patches.pool.source_ids() and not patches.pool.source_ids() & set(data.val_ids)
    assert set(patches.pool.source_ids()) <= set(data.train_ids)
    assert patches.free_ids and not set(patches.free_ids) & set(data.val_ids)
    rng = np.random.default_rng(0)
    for class_id in patches.pool.classes:
        shape = patches.shape(rng, class_id)
        assert shape.shape == (32, 32) and shape.any() and set(np.unique(shape)) <= {0.0, 1.0}
        assert patches.background(rng)[0] in patches.free_ids


def test_gan_logs_losses_and_sample_grids_to_wandb(tiny_data, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    logged = []

    class Run:  # what GanTrainer uses of a wandb run
        id = "run-123"

        def log(self, data, step):
            logged.append((step, data))

        def finish(self):
            logged.append(("finished", None))

    monkeypatch.setattr("training.gan._init_wandb", lambda cfg, resume_id: Run())
    cfg = gan_config(tiny_data, tmp_path / "gan", "--train.steps=4", "--train.sample_every=2", "--wandb.mode=offline")
    train_gan(cfg, verbose=False)
    samples = [(step, data["samples"]) for step, data in logged if isinstance(data, dict) and "samples" in data]
    assert [step for step, _ in samples] == [2, 4]
    assert all(isinstance(image, wandb.Image) for _, image in samples)
    losses = [step for step, data in logged if isinstance(data, dict) and "d_loss" in data]
    assert losses == [2, 4] and logged[-1] == ("finished", None)
    assert load_checkpoint(tmp_path / "gan" / "last.pt")["wandb_id"] == "run-123"  # a resume continues the run


def test_gan_resumes_exactly(tiny_data, tmp_path):
    straight = train_gan(gan_config(tiny_data, tmp_path / "a", "--train.steps=6", "--train.checkpoint_every=3"),
                         verbose=False)
    train_gan(gan_config(tiny_data, tmp_path / "b", "--train.steps=3", "--train.checkpoint_every=3"), verbose=False)
    with pytest.raises(SystemExit, match="--resume"):
        train_gan(gan_config(tiny_data, tmp_path / "b", "--train.steps=6"), verbose=False)
    resumed = train_gan(gan_config(tiny_data, tmp_path / "b", "--train.steps=6", "--train.checkpoint_every=3"),
                        resume=True, verbose=False)
    assert resumed.step == 6
    for a, b in [(straight.generator, resumed.generator), (straight.discriminator, resumed.discriminator)]:
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    moved = GanTrainer(gan_config(tiny_data, tmp_path / "c", "--train.steps=6"), verbose=False)
    assert any(not torch.equal(x, y) for x, y in zip(moved.generator.state_dict().values(),
                                                      straight.generator.state_dict().values()))
    a, b = ({(r := json.loads(l))["step"]: r for l in (tmp_path / n / "metrics.jsonl").read_text().splitlines()}
            for n in "ab")
    assert list(a) == [2, 4, 6] and list(b) == [2, 3, 4, 6]  # b also logged the end of its first run
    assert all(a[s] == b[s] for s in a)


def test_synthesized_folder_is_read_back_with_its_masks_for_training_only(tiny_data, tmp_path):
    gan = tmp_path / "gan"
    train_gan(gan_config(tiny_data, gan, "--train.steps=2"), verbose=False)
    out = tmp_path / "synth"
    summary = synthesize(gan / "last.pt", out, {3: 4}, verbose=False)
    assert summary["images"] == 4 and (out / "grid.png").is_file()
    extra = Annotations.load(out / "train.csv", out / "train_images")
    assert extra.image_ids == [f"gan_c3_{k:05d}.jpg" for k in range(4)]
    for image_id in extra.image_ids:
        masks = extra.masks(image_id)
        assert masks[2].any() and not masks[[0, 1, 3]].any()
        rows, cols = np.nonzero(masks[2])
        assert np.ptp(rows) < 32 and np.ptp(cols) < 32  # one patch-sized window
    cfg = load_config(overrides=[f"--data.root={tiny_data}", f"--output_dir={tmp_path}", "--data.folds=3",
                                 f"--data.split_file={tmp_path / 'folds.csv'}", f"--data.extra_root={out}",
                                 "--data.crop_width=0", "--data.num_workers=0", *NO_AUGMENT])
    plain = load_run_data(load_config(overrides=[f"--data.root={tiny_data}", "--data.folds=3",
                                                 f"--data.split_file={tmp_path / 'folds.csv'}"]))
    data = load_run_data(cfg)
    assert data.train_ids == plain.train_ids + extra.image_ids
    assert data.val_ids == plain.val_ids
    dataset = build_train_dataset(cfg, data, "semantic")
    image, target = dataset[data.train_ids.index("gan_c3_00002.jpg")]
    assert image.shape == (3, 256, 1600)
    np.testing.assert_array_equal(target["masks"].numpy(), extra.masks("gan_c3_00002.jpg").astype(np.float32))
    assert target["labels"].tolist() == [0, 0, 1, 0]


def test_synthesize_script_keeps_a_finished_folder_and_refuses_other_arguments(tiny_data, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("synthesize_script", ROOT / "scripts" / "synthesize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    train_gan(gan_config(tiny_data, tmp_path / "gan", "--train.steps=1"), verbose=False)
    args = ["--checkpoint", str(tmp_path / "gan" / "last.pt"), "--out", str(tmp_path / "s"), "--per-class", "3:2"]
    first = script.main(args)
    assert first["images"] == 2 and first["per_class"] == {"3": 2}
    assert script.main(args) == first and "already holds this synthesis" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"per_class: \{'3': 2\} there, \{'3': 5\} now"):
        script.main(args[:-1] + ["3:5"])
    with pytest.raises(SystemExit, match="seed: 0 there, 1 now"):
        script.main(args + ["--seed", "1"])
    with pytest.raises(SystemExit):  # argparse: exit 2, the reason on stderr
        script.main(args[:-1] + ["3-5"])
    assert "'3-5': give class:count" in capsys.readouterr().err


def test_synthesize_refuses_a_class_the_gan_did_not_learn(tiny_data, tmp_path):
    train_gan(gan_config(tiny_data, tmp_path / "gan", "--train.steps=1"), verbose=False)
    with pytest.raises(ValueError, match="classes"):
        synthesize(tmp_path / "gan" / "last.pt", tmp_path / "s", {1: 2}, verbose=False)


@pytest.mark.parametrize("path", sorted(Path("configs").rglob("gan_*.yaml")), ids=str)
def test_shipped_gan_configs_load(path):
    cfg = load_gan_config(path)
    assert DefectGenerator(cfg.model.base_channels)(torch.rand(1, 1, 32, 32), torch.ones(1, 1, 32, 32),
                                                    torch.tensor([2])).shape == (1, 1, 32, 32)


def test_gan_config_is_checked():
    with pytest.raises(ConfigError, match="model.patch"):
        load_gan_config(overrides=["--model.patch=30"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_gan_config(overrides=["--train.epochs=3"])
    with pytest.raises(ConfigError, match="not one of"):
        load_gan_config(overrides=["--loss.adversarial=wgan"])
    with pytest.raises(ConfigError, match="model.disc_input"):
        load_gan_config(overrides=["--model.disc_input=normalised"])


def test_adversarial_losses_count_only_the_cells_that_hold_the_mask():
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 0:4, 0:4] = 1  # the top-left cell of a 4x4 logit grid
    weight = logit_weights(mask, torch.zeros(1, 1, 4, 4))
    assert weight.sum() == 1 and weight[0, 0, 0, 0] == 1
    real, fake = torch.full((1, 1, 4, 4), -5.0), torch.full((1, 1, 4, 4), 5.0)
    real[0, 0, 0, 0], fake[0, 0, 0, 0] = 1.0, -1.0  # the masked cell is perfectly told apart
    assert float(discriminator_loss(real, fake, "hinge", weight)) == 0.0
    assert float(discriminator_loss(real, fake, "lsgan", weight)) == 0.5
    assert float(generator_adv_loss(fake, "hinge", weight)) == 1.0


def test_discriminator_sees_patches_standardised_by_their_background():
    torch.manual_seed(0)
    image = torch.rand(3, 1, 32, 32) * 0.2 + 0.4
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:20, 8:24] = 1
    mask[2] = 1  # all mask: centred on its own mean, no division by a zero count
    out = standardise(image, mask)
    outside = out[:2][mask[:2] == 0].view(2, -1)
    torch.testing.assert_close(outside.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(outside.std(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.isfinite(out).all() and abs(float(out[2].mean())) < 1e-5
    # a strip's brightness and contrast do not reach the discriminator; the raw one sees them
    brighter = image * 0.5 + 0.3
    torch.testing.assert_close(standardise(brighter, mask), out, atol=1e-4, rtol=0)
    class_ids = torch.tensor([1, 2, 3])
    torch.manual_seed(1)
    standardised = PatchDiscriminator(8)
    torch.testing.assert_close(standardised(brighter, mask, class_ids), standardised(image, mask, class_ids),
                               atol=1e-4, rtol=0)
    raw = PatchDiscriminator(8, input="raw")
    raw.load_state_dict(standardised.state_dict())
    with torch.no_grad():
        assert float((raw(brighter, mask, class_ids) - raw(image, mask, class_ids)).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="standardised"):
        PatchDiscriminator(8, input="centred")


def faint_pits(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real patches (pits 0.05 darker than their strip, strips of random
    brightness 0.2-0.8), their masks, and fakes that fill the mask with the
    strip's grey: what the generator painted while its discriminator saw raw
    pixels (EXPERIMENTS.md, entry 24)."""
    base = rng.uniform(0.2, 0.8, (n, 1, 1, 1)) + rng.normal(0, 0.01, (n, 1, 32, 32))
    mask = np.zeros((n, 1, 32, 32))
    mask[:, :, 8:24, 8:24] = 1
    pits = (rng.random((n, 1, 32, 32)) < 0.15) * mask
    real = base - 0.05 * pits
    fake = base * (1 - mask) + base.mean((2, 3), keepdims=True) * mask
    return tuple(torch.from_numpy(a).float() for a in (real, mask, fake))


def test_a_standardised_discriminator_tells_faint_defects_from_a_flat_fill():
    """The regression behind entry 24: on raw pixels the discriminator stays
    near chance (hinge loss 2.0) on faint pits; standardised it learns them."""
    losses = {}
    for kind in ("raw", "standardised"):
        torch.manual_seed(0)
        disc = PatchDiscriminator(8, input=kind)
        opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
        rng = np.random.default_rng(0)
        class_ids = torch.ones(8, dtype=torch.long)
        for _ in range(60):
            real, mask, fake = faint_pits(rng, 8)
            real_logits = disc(real, mask, class_ids)
            loss = discriminator_loss(real_logits, disc(fake, mask, class_ids), "hinge",
                                      logit_weights(mask, real_logits))
            opt.zero_grad()
            loss.backward()
            opt.step()
        real, mask, fake = faint_pits(np.random.default_rng(1), 32)
        with torch.no_grad():
            real_logits = disc(real, mask, class_ids[:1].repeat(32))
            losses[kind] = float(discriminator_loss(real_logits, disc(fake, mask, class_ids[:1].repeat(32)), "hinge",
                                                    logit_weights(mask, real_logits)))
    assert losses["standardised"] < 1.0 < 1.5 < losses["raw"], losses
