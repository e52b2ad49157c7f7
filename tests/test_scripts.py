"""Every script in scripts/ runs here at its smallest size, so none of them rots.

Their numbers are not judged (speed targets live in the scripts and the README);
what is judged is that each runs to its end and says what it promises to say.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPTS = REPO / "scripts"
pytestmark = pytest.mark.slow


def script(*args: str, cwd, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`python scripts/ARGS`, and the JSON of its last stdout line (None when it has none)."""
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    lines = result.stdout.strip().splitlines()
    try:
        return result, json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return result, None


def test_every_script_has_a_test_here():
    tested = {"gpu_check.py", "bench.py", "bench_scale.py", "bench_launchers.py", "sdxl_random.py", "flux_random.py"}
    assert {path.name for path in SCRIPTS.glob("*.py")} == tested


def test_gpu_check_on_the_cpu_runs_its_tests_and_fills_its_table(tmp_path, tiny_models):
    result, out = script(str(SCRIPTS / "gpu_check.py"), "--device", "cpu", "--json-out", str(tmp_path / "check.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out == json.loads((tmp_path / "check.json").read_text())  # the file says what the last line says
    assert out["checks_failed"] == 0 and out["tests"]["exit"] == 0
    assert out["tests"]["expected"] >= 3 and out["tests"]["passed"] == out["tests"]["expected"]
    # The dtype that ran, read from the resident pipeline, not the one asked for.
    assert [(row["dtype"], row["vae_dtype"], row["batch"]) for row in out["table"]] == [("float32", "float32", 1), ("bfloat16", "bfloat16", 2)]
    assert all(row["problems"] == [] and row["s_per_image"] > 0 for row in out["table"])
    drift = out["dtype_drift"]
    assert drift["problems"] == [] and set(drift["drift"]) == {"float32_sdpa_vs_cpu_float32", "float16_sdpa_vs_float32", "bfloat16_sdpa_vs_float32"}
    assert 0 < drift["drift"]["bfloat16_sdpa_vs_float32"] < drift["seed_distance"] / 4  # bfloat16 really ran: its images differ a little
    # FLUX at its tiny config: the same pipeline call, FLOP count and row fields as the full-size rows on CUDA.
    flux = out["flux_table"]
    assert [(row["model"], row["dtype"], row["vae_dtype"], row["batch"], row["images"]) for row in flux] == [
        ("flux-tiny", "float32", "float32", 1, 1), ("flux-tiny", "float32", "float32", 2, 2)]
    for row in flux:
        assert row["problems"] == [] and row["nan"] is False
        for field in ("s_per_image", "images_per_s", "warmup_s", "tflop_per_image", "tflops", "fraction_of_matmul_peak"):
            assert isinstance(row[field], (int, float)) and row[field] > 0, (field, row[field])
        assert row["tflops"] == pytest.approx(row["tflop_per_image"] * row["images_per_s"], rel=0.02)
        assert row["fraction_of_matmul_peak"] == pytest.approx(row["tflops"] / out["matmul_peak_tflops"], rel=0.02)
        assert row["peak_memory_gb"] is None and row["goal_s_per_image"] is None and row["meets_goal"] is None  # CUDA only
    assert flux[0]["tflop_per_image"] == out["flux"]["tflop_per_image"] > out["flux"]["vae_decode_tflop"] > 0
    assert out["flux"]["text_encoders"].startswith("not built")
    scoring = out["scoring"]  # the tiny scorers against the tiny model's fastest row
    assert scoring["scorer"] == "tiny-clip" and scoring["problems"] == [] and scoring["ms_per_image"] > 0
    assert scoring["overhead"] == pytest.approx(scoring["ms_per_image"] / 1000 / min(row["s_per_image"] for row in out["table"]), rel=0.01)
    assert out["checks_passed"] == out["tests"]["passed"] + len(out["table"]) + len(flux) + 1 + 1  # + the drift check, the scoring row


def test_gpu_check_fails_when_a_cuda_test_fails(tmp_path, tiny_models, monkeypatch):
    """Its pytest step is judged from pytest's own report: a failing test is a failed check and exit 1."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPTS))
    failing = tmp_path / "tests"
    failing.mkdir()
    (failing / "test_cuda.py").write_text("import pytest\n\n@pytest.mark.cuda\ndef test_a(): pass\n\n@pytest.mark.cuda\ndef test_b(): assert False\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: x\n")
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    tests = gpu_check.run_cuda_tests("cpu", timeout_s=120)
    assert (tests["passed"], tests["failed"], tests["expected"]) == (1, 1, 2)
    (failing / "test_cuda.py").write_text("import pytest, time\n\n@pytest.mark.cuda\ndef test_slow(): time.sleep(60)\n")
    assert gpu_check.run_cuda_tests("cpu", timeout_s=5)["failed"] == 1  # a timeout is a failure, not a hang


def test_gpu_check_lists_flux_rows_past_the_budget_as_skipped_without_building_flux():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPTS))
    result = {"flux_table": [], "failed_rows": [], "skipped_rows": []}
    gpu_check.flux_rows("cuda", 1.0, lambda: True, result, lambda: None)
    assert [(row["model"], row["compile"], row["batch"]) for row in result["skipped_rows"]] == [
        ("flux-random", compile_mode, batch) for compile_mode in ("off", "default") for batch in (1, 2, 4)]
    assert "flux" not in result and result["flux_table"] == result["failed_rows"] == []


def test_bench_at_256_px_matches_the_loops_pixel_for_pixel(tmp_path, tiny_models):
    """At 256 px SDXL's invisible watermark would apply (it skips smaller images): the loops leave it off as sweeper does."""
    result, out = script(str(SCRIPTS / "bench.py"), "--seeds", "1", "--guidance", "5", "--size", "256", "--steps", "1", "--no-plan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out["same_image_count"] and out["max_pixel_diff"] == 0 and out["batched_loop_max_pixel_diff"] == 0
    assert out["sweeper_stages"], "the start line and progress bar were not found in sweeper's output"
    assert all(out[f"{side}_ms_per_image"] > 0 for side in ("loop", "batched_loop", "sweeper"))
    assert out["sweeper_vs_batched_loop"] > 0
    assert out["scorer"] == "tiny-clip" and out["scoring_ms_per_image"] > 0
    assert out["scoring_overhead"] == pytest.approx(out["scoring_ms_per_image"] / out["sweeper_ms_per_image"], rel=0.01)


def test_bench_scale_runs_a_small_sweep_twice_and_opens_its_report(tmp_path, tiny_models):
    result, out = script(str(SCRIPTS / "bench.py"), "--scale", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out["scale_images"] == out["scale_ok"] == 4 and out["parts_left"] == 0
    assert out["report_open_s"] is not None and out["report_open_s"] >= 0


def test_bench_launchers_compare_a_local_slurm_array_with_processes(tmp_path, tiny_models):
    args = ("--launcher", "slurm-local", "--seeds", "2", "--guidance", "5", "--steps", "1")
    result, out = script(str(SCRIPTS / "bench.py"), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out["images"] == 2 and out["ratio"] > 0


def test_sdxl_random_counts_the_real_models_parameters_without_building_it(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "sdxl_random.py"), "--count"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert round(counts["unet"] / 1e9, 2) == 2.57  # SDXL base's UNet, as DESIGN.md gives it


def test_flux_random_counts_the_real_models_parameters_and_flops_without_building_it(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "flux_random.py")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert round(counts["transformer"] / 1e9, 1) == 11.9 and round(counts["vae"] / 1e6) == 84  # FLUX.1-dev's
    assert counts["image_tflop"] == pytest.approx(counts["transformer_forward_tflop"] * 28 + counts["vae_decode_tflop"], rel=1e-4)
    # The README's and gpu_check's numbers at 1024x1024, 28 steps.
    assert (round(counts["transformer_forward_tflop"], 1), round(counts["vae_decode_tflop"], 1), round(counts["image_tflop"])) == (74.4, 10.5, 2093)


@pytest.mark.parametrize("tiny, size", [(False, 1024), (False, 512), (True, 64)])
def test_flux_flop_formula_matches_torchs_flop_counter(tiny, size):
    """The FLOPs per transformer forward that gpu_check divides by are the config formula's; torch counts the same
    forward on the meta device (nothing allocated), matmul by matmul."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(SCRIPTS))
    try:
        import flux_random
    finally:
        sys.path.remove(str(SCRIPTS))
    transformer_config, vae_config, text_tokens = flux_random.configs(tiny)
    transformer = flux_random.build("meta", "bfloat16", tiny=tiny).transformer
    tokens = flux_random.image_tokens(size, vae_config)
    assert tokens == (size // 16) ** 2
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        transformer(hidden_states=torch.zeros(1, tokens, transformer_config["in_channels"]), timestep=torch.zeros(1), guidance=torch.zeros(1),
                    pooled_projections=torch.zeros(1, transformer_config["pooled_projection_dim"]),
                    encoder_hidden_states=torch.zeros(1, text_tokens, transformer_config["joint_attention_dim"]),
                    txt_ids=torch.zeros(text_tokens, 3), img_ids=torch.zeros(tokens, 3), return_dict=False)
    assert flux_random.transformer_flops(transformer_config, tokens, text_tokens) == counter.get_total_flops()
