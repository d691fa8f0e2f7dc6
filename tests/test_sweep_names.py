"""Sweep run names: the swept keys a run-name template hides are appended (-lr0.003); keys it shows,
and keys that cannot change a result (logger, launcher, bookkeeping), are not."""
from omegaconf import OmegaConf

from archcmp.training.sweep_names import suffix, sweep_group, swept_keys, template_references
from hydra_cfg import compose_cfg

DEFAULT = "${arch.name}-${size.name}-${oc.select:task.label,${task.name}}-s${seed}"


def test_only_keys_with_several_values_are_swept():
    keys = swept_keys(["optimizer.lr=1e-3,3e-3", "seed=0", "train.steps=2", "arch=decoder,encoder",
                       "+model.n_heads=range(2,5,2)"], {"size": "nano,micro", "task": "addition"})
    assert keys == ["optimizer.lr", "arch", "model.n_heads", "size"]


def test_template_references_see_through_resolvers():
    assert template_references(DEFAULT) == {"arch.name", "size.name", "task.label", "task.name", "seed"}


def _suffix(overrides, swept, choices=None):
    cfg = compose_cfg(overrides)
    return suffix(cfg, DEFAULT, choices or {}, swept)


def test_hidden_keys_are_appended_readably_and_shown_ones_are_not():
    assert _suffix(["optimizer.lr=3e-3"], ["optimizer.lr"]) == "-lr0.003"
    assert _suffix(["optimizer.lr=3e-3", "train.steps=40"], ["optimizer.lr", "seed", "arch", "train.steps"]) == \
        "-lr0.003-steps40"
    # task=shakespeare,shakespeare_bpe: the template shows task.label/task.name, so nothing is added
    assert _suffix(["task=shakespeare_bpe"], ["task"], {"task": "shakespeare_bpe"}) == ""
    # the tokenizer swept directly is hidden by the template
    assert _suffix(["task=shakespeare", "task.params.tokenizer=bpe"], ["task.params.tokenizer"]) == "-tokenizerbpe"
    # a group the template does not show: its choice
    assert _suffix([], ["optimizer"], {"optimizer": "adamw"}) == "-optimizeradamw"


def test_keys_that_cannot_change_a_result_add_nothing():
    assert _suffix(["logger=wandb"], ["logger", "launcher", "train.progress", "train.log_every",
                                      "experiment_name"], {"logger": "wandb", "launcher": "joblib"}) == ""


def test_two_keys_ending_alike_keep_their_full_names_and_long_values_are_hashed():
    cfg = OmegaConf.create({"a": {"eps": 1}, "b": {"eps": 2}, "c": {"names": ["x" * 20, "y" * 20]}})
    assert suffix(cfg, "${seed}", {}, ["a.eps", "b.eps"]) == "-a.eps1-b.eps2"
    part = suffix(cfg, "${seed}", {}, ["c.names"])
    assert part.startswith("-names") and len(part) == len("-names") + 8


def test_a_template_that_names_each_job_apart_gets_no_suffix():
    """run_name=r${hydra:job.num} already differs per job: nothing is appended (the directories stay
    r0, r1, ... as the user asked), while the same sweep under a template without it is told apart."""
    cfg = OmegaConf.create({"a": {"eps": 1}})
    assert suffix(cfg, "r${hydra:job.num}", {}, ["a.eps"]) == ""
    assert suffix(cfg, "r${hydra.job.num}-${seed}", {}, ["a.eps"]) == ""
    assert suffix(cfg, "r${seed}", {}, ["a.eps"]) == "-eps1"


def test_a_sweep_without_a_name_is_grouped_by_its_folder_and_what_it_varies():
    keys = swept_keys(["seed=0,1", "arch=decoder,encoder", "train.steps=2"], None)
    assert sweep_group("default", keys) == "default sweep over seed, arch"
    assert sweep_group("default", swept_keys(["optimizer.lr=1e-3,3e-3"], None)) == "default sweep over optimizer.lr"
    assert sweep_group("mysweep", []) == "mysweep sweep"
