"""Every YAML composes; the size ladder is parameter-matched; bad values name their key."""
import pytest
import yaml
from omegaconf import OmegaConf

from archcmp.model.accounting import count_params
from archcmp.data import make_task
from archcmp.training.settings import ConfigError, parse
from archcmp.training.loop import CONF_DIR, CONF_GROUPS, check_overrides
from hydra_cfg import compose_cfg

ARCHS = ["encoder", "decoder", "prefix_lm", "encdec"]


def _options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", CONF_GROUPS)
def test_every_yaml_composes_and_validates(group):
    options = _options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        cfg = compose_cfg([f"{group}={option}"], return_hydra_config=True)
        settings, shape = parse(cfg)
        assert settings.arch in ARCHS and shape


def test_experiment_files_only_change_what_they_need():
    base = compose_cfg([])
    quick = compose_cfg(["experiment=quickstart"], return_hydra_config=True)
    assert quick.experiment_name == "quickstart"
    assert quick.train.steps != base.train.steps
    assert quick.hydra.sweeper.params.arch == "encoder,decoder,prefix_lm,encdec"
    assert quick.optimizer == base.optimizer  # untouched groups stay the defaults


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiment_file_sets_nothing_to_its_default(experiment):
    """An experiment file holds only what it changes: no group choice and no value in it equals
    what the config would be without it (the same group choices applied)."""
    raw = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    groups = {}
    for entry in raw.pop("defaults", []):
        if isinstance(entry, str):  # another experiment file it builds on: compared against that one
            groups["experiment"] = entry
            continue
        (key, choice), = entry.items()
        groups[key.removeprefix("override /")] = choice
    base_choices = compose_cfg([], return_hydra_config=True).hydra.runtime.choices
    for group, choice in groups.items():
        assert base_choices[group] != choice, f"{experiment}: {group}={choice} is the default"
    raw.pop("hydra", None)
    base = OmegaConf.to_container(compose_cfg([f"{g}={c}" for g, c in groups.items()]), resolve=False)
    base_flat = dict(_flat(base))
    same = [k for k, v in _flat(raw) if k in base_flat and base_flat[k] == v]
    assert not same, f"{experiment}: these keys restate the default: {same}"


@pytest.mark.parametrize("task", ["addition", "shakespeare_char_vocab"])
def test_size_ladder_is_parameter_matched_within_10_percent(task):
    vocab = make_task("addition").tokenizer.vocab_size if task == "addition" else 105
    previous = 0
    sizes = ["d8", "d12", "femto", "d24", "pico", "nano", "micro", "tiny", "small", "medium", "base"]
    assert sorted(_options("size")) == sorted(sizes)
    for size in sizes:
        counts = {}
        for arch in ARCHS:
            settings, shape = parse(compose_cfg([f"arch={arch}", f"size={size}"]))
            counts[arch] = count_params(settings.model_config(vocab, shape)).total
        lo, hi = min(counts.values()), max(counts.values())
        assert hi / lo <= 1.10, (size, counts)
        assert lo > previous, f"size {size} is not larger than the previous one"
        previous = hi
    first = parse(compose_cfg(["size=nano"]))
    assert 40_000 <= count_params(first[0].model_config(vocab, first[1])).total <= 80_000
    assert previous <= 25_000_000


@pytest.mark.parametrize("override, key", [
    ("train.steps=-1", "train.steps=-1"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1"),
    ("train.grad_accum=3", "train.grad_accum=3"),
    ("seed=-2", "seed=-2"),
    ("~task", "task: missing"),
    ("+model.d_modle=3", "model.d_modle"),
    ("+model.n_heads=5", "model.n_heads=5"),
])
def test_bad_values_name_their_key(override, key):
    cfg = compose_cfg([override])
    with pytest.raises((ConfigError, ValueError)) as err:
        settings, shape = parse(cfg)
        settings.model_config(72, shape)
    assert key in str(err.value)


def test_unknown_group_options_are_caught_in_one_line():
    assert "arch='gpt5'" in check_overrides(["arch=gpt5"])
    assert "task=''" in check_overrides(["task="])
    assert "task=null" in check_overrides(["task=null"])
    assert "task: missing" in check_overrides(["~task"])
    assert check_overrides(["arch=decoder,encdec", "train.steps=3"]) is None


@pytest.mark.parametrize("size", ["nano", "micro"])
def test_token_budget_counts_the_same_reference_model_for_every_arch(size):
    # train.tokens_per_param multiplies the size's *decoder* parameter count, so a parameter
    # ladder gives all four architectures the same steps and the same examples (an encdec built
    # from the decoder's shape would have both stacks at full depth and twice the budget).
    refs = {}
    for arch in ARCHS:
        settings, shape = parse(compose_cfg([f"arch={arch}", f"size={size}", "train.tokens_per_param=5"]))
        refs[arch] = settings.reference_config(72)
        assert refs[arch].arch == "decoder"
    assert len({count_params(r).total for r in refs.values()}) == 1, refs
    decoder_settings, decoder_shape = parse(compose_cfg(["arch=decoder", f"size={size}"]))
    assert count_params(refs["encdec"]).total == count_params(decoder_settings.model_config(72, decoder_shape)).total
