"""Typed config: defaults valid, all errors at once with dotted paths, overrides, flattening."""

import pytest

from mfsweep.config import ConfigError, TrialConfig, flatten, load_config_file, load_trial_config


def test_defaults_are_the_paper_defaults():
    c = TrialConfig()
    assert c.meanflow.frac_r_neq_t == 0.25 and c.meanflow.tangent == "v01"
    assert (c.meanflow.time_sampler.name, c.meanflow.time_sampler.mu, c.meanflow.time_sampler.sigma) == ("logit_normal", -0.4, 1.0)
    assert c.model.time_embedding == "t_tr" and c.meanflow.weight_power == 1.0


def test_every_error_at_once_with_dotted_paths():
    raw = {
        "meanflow": {"frac_r_neq_t": -0.1, "tangent": "v02", "cfg": {"t_start": 0.8, "t_end": 0.2},
                     "time_sampler": {"name": "beta"}},
        "model": {"backbone": "dit", "time_embedding": "x"},
        "train": {"steps": 0, "lr": -1, "device": "tpu"},
        "eval": {"nfe": [1, 1]},
        "typo": 3,
    }
    with pytest.raises(ConfigError) as info:
        load_trial_config(raw)
    paths = {p for p, _ in info.value.errors}
    assert {"meanflow.frac_r_neq_t", "meanflow.tangent", "meanflow.cfg", "meanflow.time_sampler.name",
            "model.backbone", "model.time_embedding", "train.steps", "train.lr", "train.device", "eval.nfe",
            "typo"} <= paths
    text = str(info.value)
    assert "unknown time sampler 'beta'; valid: logit_normal, separate_logit_normal, uniform" in text
    assert "valid: dit_b2, dit_b4, dit_l2, dit_m2, dit_s2, dit_tiny, dit_xl2, mlp, unet, unet_cifar, unet_cifar_tiny" in text
    assert "t_start < t_end" in text


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="needs data.conditional"):
        load_trial_config({"meanflow": {"cfg": {"omega": 2.0}}})
    with pytest.raises(ConfigError, match="unet needs image data"):
        load_trial_config({"model": {"backbone": "unet"}})
    with pytest.raises(ConfigError, match="'forward' needs model.dropout: 0"):
        load_trial_config({"meanflow": {"u_from": "forward"}, "model": {"dropout": 0.2}})
    with pytest.raises(ConfigError, match="data.path is required"):
        load_trial_config({"data": {"name": "npy"}})
    load_trial_config({"data": {"name": "digits", "conditional": True}, "model": {"backbone": "unet"},
                       "meanflow": {"cfg": {"omega": 2.0, "kappa": 0.5}}})


def test_file_overrides_and_missing_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 10\n")
    c = load_config_file(p, ["meanflow.frac_r_neq_t=0.5", "eval.nfe=[1, 4]", "train.grad_clip=null"])
    assert c.train.steps == 10 and c.meanflow.frac_r_neq_t == 0.5 and c.eval.nfe == [1, 4] and c.train.grad_clip is None
    with pytest.raises(ConfigError, match="file not found"):
        load_config_file(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config_file(p, ["train.steps"])


def test_flatten_gives_dotted_scalars():
    flat = flatten(TrialConfig())
    assert flat["meanflow.time_sampler.mu"] == -0.4 and flat["eval.nfe"] == "[1, 2, 4, 8]"
    assert all(not isinstance(v, (dict, list)) for v in flat.values())


@pytest.mark.parametrize("name", ["checkerboard", "seed_toy", "digits", "digits_cfg"])
def test_shipped_configs_validate(name):
    load_config_file(f"studies/configs/{name}.yaml")


# ---- the method block ----------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,path,words", [
    (["method.name=nope"], "method.name", "unknown method 'nope'; valid: alphaflow, consistency, flow_matching, imf, "
                                          "meanflow, shortcut"),
    (["method.name=meanflow", "method.shortcut={}"], "method.shortcut", "settings for method 'shortcut', but "
                                                                        "method.name is 'meanflow'"),
    (["method.name=flow_matching", "meanflow.frac_r_neq_t=0.5"], "meanflow.frac_r_neq_t",
     "does not apply to method 'flow_matching'"),
    (["method.name=flow_matching", "data.conditional=true", "meanflow.cfg.omega=2.0"], "meanflow.cfg",
     "method 'flow_matching' does not take guidance"),
])
def test_method_errors_exit_2_with_the_path(tmp_path, capsys, overrides, path, words):
    from mfsweep.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: digits}\ntrain: {steps: 2}\n")
    out = tmp_path / "out"
    argv = ["train", str(cfg), "--out", str(out), "--no-progress"]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f" {path}: " in err and words in err, err  # one problem: one line "invalid config F: path: msg"
    assert not out.exists()  # nothing written


def test_method_settings_default_and_explicit():
    c = load_trial_config({"method": {"name": "flow_matching"}, "meanflow": {"weight_power": 0.0}})
    assert c.method.name == "flow_matching" and c.method.settings() is None
    assert load_trial_config({}).method.name == "meanflow"  # the default method is the paper's


def test_each_method_gets_its_own_defaults_for_shared_keys_unless_set():
    from mfsweep.config import METHOD_DEFAULTS

    for name, defaults in METHOD_DEFAULTS.items():
        c = load_trial_config({"method": {"name": name}})
        assert {k: getattr(c.meanflow, k) for k in defaults} == defaults, name
    assert load_trial_config({"method": {"name": "flow_matching"}}).meanflow.weight_power == 0.0
    assert load_trial_config({"method": {"name": "flow_matching"}, "meanflow": {"weight_power": 1.0}}).meanflow.weight_power == 1.0
    assert load_trial_config({}).meanflow.weight_power == 1.0  # MeanFlow's own
    # the chosen method's block is filled with its defaults (the resolved config shows them)
    assert flatten(load_trial_config({"method": {"name": "shortcut"}}))["method.shortcut.num_levels"] == 7
