"""Speed that holds on any CPU: precision chosen by the hardware, compute counted in FLOPs, malloc kept."""
import json

import keras
import numpy as np
import pytest
from keras import layers

from cifar_ae import cli, compute as C, hardware as H, memory, models as M


@pytest.mark.parametrize("flags, gpus, expected", [
    ({"avx2", "fma"}, [], "float32"),                             # Zen 3: AVX2 only
    ({"avx2", "avx512f", "avx512_vnni"}, [], "float32"),          # AVX-512 without BF16
    ({"avx2", "avx512f", "avx512_bf16"}, [], "mixed_bfloat16"),   # Zen 4 / Cooper Lake
    ({"avx2", "amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),     # Sapphire Rapids
    ({"avx2"}, [{"name": "A100", "compute_capability": [8, 0]}], "mixed_bfloat16"),
    ({"avx512_bf16"}, [{"name": "T4", "compute_capability": [7, 5]}], "float32"),  # the GPU decides
])
def test_precision_auto_follows_the_hardware(flags, gpus, expected):
    assert H.resolve_precision("auto", flags=flags, gpu_list=gpus) == expected
    assert H.resolve_precision("float32", flags=flags, gpu_list=gpus) == "float32"  # explicit stays explicit


@pytest.mark.parametrize("peaks, expected", [
    ({"float32": 277.0, "bfloat16": 173.0}, "float32"),          # a Xeon whose bf16 kernels were slower
    ({"float32": 214.4, "bfloat16": 386.7}, "mixed_bfloat16"),   # the Zen 4 EPYC: 1.8x
    ({"float32": 200.0, "bfloat16": 220.0}, "float32"),          # 1.1x: lost to mixed precision's casts
])
def test_precision_auto_on_a_bf16_cpu_follows_the_measured_peaks(peaks, expected, monkeypatch):
    monkeypatch.setattr(H, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    monkeypatch.setattr(H, "gpus", lambda: [])
    assert H.resolve_precision("auto", peaks=peaks) == expected
    assert "measured peaks" in H.choose_precision("auto", peaks=peaks)[1]
    monkeypatch.setattr(H, "measured_peaks", lambda: peaks)  # this machine's, as run_trial asks
    assert H.resolve_precision("auto") == expected
    monkeypatch.setattr(H, "measured_peaks", lambda: None)  # nothing measurable: the flags decide
    assert H.resolve_precision("auto") == "mixed_bfloat16"


def test_measured_peaks_are_cached_per_machine_and_a_bad_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_AE_CACHE", str(tmp_path))
    calls = []

    def fake_kernels(repeats=7, dtypes=("float32", "bfloat16")):
        calls.append(repeats)
        return {"float32": {"peak_gflops": 100.0}, "bfloat16": {"peak_gflops": 300.0}}

    monkeypatch.setattr(H, "measure_kernels", fake_kernels)
    H.measured_peaks.cache_clear()
    try:
        assert H.measured_peaks() == {"float32": 100.0, "bfloat16": 300.0} and len(calls) == 1
        cache, = tmp_path.glob("peak-gflops-*.json")
        H.measured_peaks.cache_clear()
        assert H.measured_peaks() == {"float32": 100.0, "bfloat16": 300.0} and len(calls) == 1  # read, not timed
        record = json.loads(cache.read_text())
        for bad in ("{not json", "[" * 100_000, json.dumps({**record, "peaks": {"float32": "fast", "bfloat16": 1}}),
                    json.dumps({**record, "machine": {**record["machine"], "cpu_model": "another CPU"}})):
            cache.write_text(bad)
            H.measured_peaks.cache_clear()
            assert H.measured_peaks() == {"float32": 100.0, "bfloat16": 300.0}
        assert len(calls) == 5  # each damaged or foreign cache was measured again, and rewritten whole
        assert json.loads(cache.read_text())["peaks"] == {"float32": 100.0, "bfloat16": 300.0}
    finally:
        H.measured_peaks.cache_clear()


def test_auto_precision_is_recorded_with_the_cpu(tmp_path, cifar_dir, monkeypatch):
    from cifar_ae.training import run_trial
    monkeypatch.setattr(H, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # a CPU without bf16
    run = run_trial("v3-joint-resnet", "smoke", 0, out_dir=tmp_path, verbose=0)
    config = json.loads((run / "config.json").read_text())
    assert config["trial"]["precision"] == "auto" and config["precision"] == "float32"
    assert config["key"]["trial"]["precision"] == "float32"  # the key holds what ran
    assert config["precision_why"].startswith("no native bf16")
    assert config["machine"]["cpu_model"] and "usable_cores" in config["machine"]
    metrics = json.loads((run / "metrics.json").read_text())
    flops = config["train_flops_per_image"]
    assert flops == C.train_flops_per_image(M.resnet_joint(width=32))
    assert metrics["train_pflops"] == pytest.approx(flops * config["train_images"] * metrics["epochs"] / 1e15, abs=1e-5)


def test_flops_of_a_tiny_model_by_hand():
    x = keras.Input((8, 8, 3))
    y = layers.Conv2D(4, 3, padding="same")(x)                      # 8*8*4 outputs x 3*3*3 = 6,912 MACs
    y = layers.Conv2DTranspose(2, 2, strides=2)(y)                  # 8*8*4 inputs x 2*2*2 = 2,048 MACs
    y = layers.Flatten()(y)
    out = layers.Dense(10)(y)                                       # 16*16*2 x 10 = 5,120 MACs
    model = keras.Model(x, out)
    assert C.model_macs(model) == {"trainable": 6912 + 2048 + 5120, "frozen": 0}
    assert C.train_flops_per_image(model) == 6 * (6912 + 2048 + 5120)
    model.layers[1].trainable = False                               # a frozen conv: forward only
    assert C.train_flops_per_image(model) == 2 * 6912 + 6 * (2048 + 5120)


def test_shared_tied_layers_count_every_call():
    tied, untied = M.conv_autoencoder(tie_weights=True), M.conv_autoencoder()
    assert C.model_macs(tied) == C.model_macs(untied)  # the same convolutions, one kernel used twice
    assert C.train_flops_per_image(M.resnet_joint(width=32, decoder="residual", patch_channels=48)) == 957_004_800


def test_list_prints_training_flops(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "train GFLOP/img" in out
    line = next(line for line in out.splitlines() if line.startswith("v3-joint-resnet-patch "))
    assert "0.957" in line


def test_malloc_is_tuned_through_mallopt():
    applied = memory.tune_malloc()
    assert applied == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 256 << 20}
    a = np.ones(64 << 20, np.uint8)  # a 64 MiB block still allocates and frees
    assert a.sum() == 64 << 20


