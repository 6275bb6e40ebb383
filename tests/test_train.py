"""Training of the shapes model on a micro config: stages run, resume exactly, export loads offline."""

import json

import pytest
import torch

from editflow.errors import EditflowError
from editflow.train import TrainConfig
from editflow.train import stages
from editflow.train.__main__ import main as train_main

MICRO = {
    "image_size": 32,
    "world_version": 2,
    "checkpoint_every": 2,
    "vae": {"block_out_channels": [8, 8], "norm_num_groups": 4, "steps": 3, "batch_size": 2},
    "text": {"dim": 16, "t5_layers": 1, "tokenizer_corpus": 300, "t5_vocab_size": 80, "pretrain_steps": 3,
             "pretrain_batch_size": 4},
    "flow": {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2,
             "axes_dims_rope": [2, 2, 4], "steps": 4, "batch_size": 2, "warmup": 2, "caption_dropout": 0.5},
    "distill": {"steps": 3, "batch_size": 2, "warmup": 1},
}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "micro.json").write_text(json.dumps(MICRO))
    assert train_main(["all", "--config", str(root / "micro.json"), "--run", str(root / "run"), "--quiet"]) == 0
    return root


def test_stages_write_checkpoints_and_logs(micro_run):
    run = micro_run / "run"
    for sub in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "transformer", "student"):
        assert (run / sub).is_dir(), sub
    assert not (run / "text_encoder_2.train").exists()  # the pretraining scratch folder is gone
    accuracy = json.loads((run / "text_pretrain.json").read_text())["held_out_token_accuracy"]
    assert set(accuracy) == {"size", "color", "shape", "position", "background"}
    state = torch.load(run / "transformer" / "state.pt", weights_only=True)
    assert state["step"] == 4
    log = [json.loads(line) for line in (run / "flow.log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and log[-1]["loss"] > 0


def test_student_starts_as_the_conditional_teacher_and_learns_guidance(micro_run):
    from diffusers import FluxTransformer2DModel

    cfg = TrainConfig.load(micro_run / "micro.json")
    teacher = FluxTransformer2DModel.from_pretrained(micro_run / "run" / "transformer")
    fresh = stages.student_from(teacher, cfg)
    trained = FluxTransformer2DModel.from_pretrained(micro_run / "run" / "student")
    assert trained.config.guidance_embeds and not teacher.config.guidance_embeds
    pipe = stages.assemble(micro_run / "run", teacher)
    batches = stages.FlowBatches(cfg, pipe, "cpu")
    z_t, t, _, cond = batches(0, 2, 0.0)
    with torch.no_grad():
        v_teacher = batches.velocity(teacher, z_t, t, cond)
        for g in (1.0, 7.0):
            v_fresh = batches.velocity(fresh, z_t, t, cond, guidance=torch.full((2,), g))
            assert torch.allclose(v_fresh, v_teacher, atol=1e-5)  # the zero guidance layer adds nothing yet
        v1, v7 = (batches.velocity(trained, z_t, t, cond, guidance=torch.full((2,), g)) for g in (1.0, 7.0))
    assert float((v1 - v7).abs().max()) > 1e-4  # after distillation the guidance value acts
    log = [json.loads(line) for line in (micro_run / "run" / "distill.log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3


def test_vae_latents_are_normalised(micro_run):
    from diffusers import AutoencoderKL

    from editflow.train.data import world_batch

    vae = AutoencoderKL.from_pretrained(micro_run / "run" / "vae")
    x, _ = world_batch(0, 10_000, 16, 32, version=2)
    with torch.no_grad():
        z = (vae.encode(x).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
    assert abs(float(z.mean())) < 0.3 and 0.6 < float(z.std()) < 1.4


def test_resumed_training_equals_uninterrupted(micro_run, tmp_path):
    """Stop the flow stage at step 2, resume to 4: the weights equal a straight run's, bit for bit."""
    import shutil

    from diffusers import FluxTransformer2DModel

    cfg = TrainConfig.load(micro_run / "micro.json")
    run = tmp_path / "run"
    shutil.copytree(micro_run / "run", run, ignore=shutil.ignore_patterns("transformer*", "flow.log.jsonl"))
    cfg.flow.steps = 2
    stages.stage_flow(cfg, run, progress=False)
    cfg.flow.steps = 4
    stages.stage_flow(cfg, run, progress=False)
    # (steps 0-1 are LR warm-up, identical whatever the total, so stopping at 2 is a true interruption)
    resumed = FluxTransformer2DModel.from_pretrained(run / "transformer").state_dict()
    run2 = tmp_path / "run2"
    shutil.copytree(micro_run / "run", run2, ignore=shutil.ignore_patterns("transformer*", "flow.log.jsonl"))
    stages.stage_flow(cfg, run2, progress=False)
    straight = FluxTransformer2DModel.from_pretrained(run2 / "transformer").state_dict()
    assert resumed.keys() == straight.keys()
    diffs = [float((resumed[k] - straight[k]).abs().max()) for k in resumed]
    assert max(diffs) == 0.0


def test_resume_refuses_a_different_model_but_allows_more_steps(micro_run, tmp_path):
    cfg = TrainConfig.load(micro_run / "micro.json")
    stages.save_config(cfg, tmp_path)
    cfg.flow.steps += 10
    cfg.device = "cpu"
    stages.save_config(cfg, tmp_path)  # longer training and another device: fine
    cfg.flow.num_layers += 1
    with pytest.raises(ValueError, match="another config"):
        stages.save_config(cfg, tmp_path)


def test_a_run_saved_before_new_config_keys_still_resumes(tmp_path):
    """The first shapes model's run (world version 1) was saved before world_version, vae.edge_weight
    and distill existed: resuming it with the same configuration file must not be refused."""
    saved = TrainConfig.load("configs/shapes-cpu.json").to_dict()
    del saved["world_version"], saved["vae"]["edge_weight"], saved["distill"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    stages.save_config(TrainConfig.load("configs/shapes-cpu.json"), tmp_path)
    cfg = TrainConfig.load("configs/shapes-cpu.json")
    cfg.world_version = 2
    with pytest.raises(ValueError, match="another config"):
        stages.save_config(cfg, tmp_path)


def test_distillation_needs_an_unconditional_teacher_and_export_needs_it_finished(micro_run, tmp_path):
    import shutil

    cfg = TrainConfig.load(micro_run / "micro.json")
    cfg.flow.caption_dropout = 0.0
    with pytest.raises(ValueError, match="caption_dropout"):  # refused when the run starts, before hours of training
        stages.save_config(cfg, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="caption_dropout > 0"):
        stages.stage_distill(cfg, tmp_path, progress=False)
    run = tmp_path / "run"
    shutil.copytree(micro_run / "run", run)
    config = json.loads((run / "config.json").read_text())
    config["distill"]["steps"] = 10  # the student stopped at 3 of 10
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="stopped at step 3 of 10"):
        stages.export(run, tmp_path / "out")
    config["distill"]["steps"] = 0  # no distillation: the teacher is exported
    (run / "config.json").write_text(json.dumps(config))
    assert stages.final_transformer_dir(run) == run / "transformer"


def test_bad_config_files_fail_with_one_line(tmp_path):
    (tmp_path / "bad.json").write_text('{"vae": {"stepz": 3}}')
    with pytest.raises(EditflowError, match="unknown key 'stepz'"):
        TrainConfig.load(tmp_path / "bad.json")
    with pytest.raises(EditflowError, match="not found"):
        TrainConfig.load(tmp_path / "absent.json")


def test_export_is_a_loadable_pipeline_folder_with_a_model_card(micro_run, tmp_path):
    import subprocess
    import sys

    out = stages.export(micro_run / "run", tmp_path / "shapes")
    card = (out / "MODEL.md").read_text()
    assert "Transformer: 4 steps" in card and "safetensors" in card
    assert json.loads((out / "transformer" / "config.json").read_text())["guidance_embeds"]  # the student
    assert not [c for c in out.glob("*/config.json") if str(micro_run) in c.read_text()]  # no training-machine paths
    assert not list(out.rglob("*.bin")) and sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 60 * 2**20
    code = ("import sys, editflow; m = editflow.load_model(sys.argv[1], device='cpu'); assert m.guidance_distilled; "
            "im = editflow.generate(m, 'a large red circle in the center, on a gray background', 32, 32, steps=2); "
            "print(im.size)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("(32, 32)")
