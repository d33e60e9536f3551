from pathlib import Path

import pytest
import yaml

from tsn.config import (
    Config,
    ConfigError,
    DataConfig,
    SchedulerConfig,
    TrainConfig,
    load_config,
    resolve_path,
    save_config,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    return str(info.value)


def test_minimal_config_takes_the_fine_tuning_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data:\n  root: /data/x\nmodel:\n  backbone: resnet50\n"), [])
    assert cfg.data.root == "/data/x"
    assert cfg.model.backbone == "resnet50"
    assert cfg.model.pretrained is True
    assert (cfg.data.num_segments, cfg.data.batch_size, cfg.data.format, cfg.data.on_error) == (8, 8, "video", "skip")
    assert cfg.model.consensus == "feature_max"
    # LP-FT for small data (README, Accuracy on small data sets)
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.backbone_lr_mult) == ("adamw", 1e-4, 1.0)
    assert (cfg.train.head_init, cfg.train.epochs, cfg.train.ema_decay) == ("linear_probe", 10, None)
    assert (cfg.train.weight_decay, cfg.train.no_decay_bias_norm, cfg.train.label_smoothing) == (5e-4, True, 0.0)
    assert (cfg.model.freeze_bn, cfg.model.dropout, cfg.model.frozen_stages) == (True, 0.0, 0)
    assert (cfg.data.train_scales, cfg.data.train_sampling) == ((1.0, 0.875), "fractional")
    assert cfg.train.scheduler == SchedulerConfig(name="cosine", warmup_epochs=1)
    assert (cfg.test.num_clips, cfg.test.crops) == (2, 3)


def test_none_path_gives_defaults_and_empty_sections_are_allowed(tmp_path: Path) -> None:
    assert load_config(None, []) == Config()
    assert load_config(write(tmp_path, ""), []) == Config()
    assert load_config(write(tmp_path, "test:\n"), []) == Config()


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "train:\n  scheduler:\n    name: cosine\n    gamma: 0.5\n"),
        [
            "train.lr=0.1",
            "train.scheduler.name=multistep",
            "train.scheduler.milestones=[10,20]",
            "model.pretrained=false",
            "model.bilinear_dim=null",
            "test.crops=10",
            "data.root=/a b/c",
        ],
    )
    assert cfg.train.lr == 0.1
    assert cfg.train.scheduler.name == "multistep"
    assert cfg.train.scheduler.milestones == (10, 20)
    assert cfg.train.scheduler.gamma == 0.5  # kept from the file
    assert cfg.model.pretrained is False
    assert cfg.model.bilinear_dim is None
    assert cfg.test.crops == 10
    assert cfg.data.root == "/a b/c"


def test_mapping_override_merges_into_the_section() -> None:
    cfg = load_config(None, ["train.scheduler={name: multistep, milestones: [5]}", "train.scheduler.gamma=0.2"])
    assert (cfg.train.scheduler.name, cfg.train.scheduler.milestones, cfg.train.scheduler.gamma) == (
        "multistep",
        (5,),
        0.2,
    )
    assert cfg.train.scheduler.warmup_epochs == 1


def test_numbers_int_for_float_and_yaml11_exponents(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n  weight_decay: 1e-4\n"), ["train.momentum=0"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == 1e-4  # YAML 1.1 reads "1e-4" as a string
    assert cfg.train.momentum == 0.0


def test_pretrained_accepts_a_path() -> None:
    cfg = load_config(None, ["model.pretrained=weights/bninception.pth"])
    assert cfg.model.pretrained == "weights/bninception.pth"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("train:\n  lr: abc\n", (), "train.lr: expected float, got 'abc'"),
        ("", ("train.lr=abc",), "train.lr: expected float, got 'abc'"),
        ("train:\n  lrr: 0.1\n", (), "train.lrr: unknown key (did you mean 'lr'?)"),
        ("trian:\n  lr: 0.1\n", (), "trian: unknown key (did you mean 'train'?)"),
        ("", ("train.scheduler.nme=cosine",), "train.scheduler.nme: unknown key (did you mean 'name'?)"),
        ("data:\n  format: mp4\n", (), "data.format: expected one of 'video', 'rawframes', got 'mp4'"),
        ("", ("data.num_segments=3.5",), "data.num_segments: expected int, got 3.5"),
        ("", ("data.num_segments=0",), "data.num_segments: must be >= 1, got 0"),
        ("", ("model.partial_bn=1",), "model.partial_bn: expected bool, got 1"),
        ("", ("model.partial_bn=maybe",), "model.partial_bn: expected bool, got 'maybe'"),
        ("", ("train.channels_last=0",), "train.channels_last: expected bool, got 0"),
        ("", ("test.crops=5",), "test.crops: expected one of 1, 3, 10, got 5"),
        ("", ("test.crops=true",), "test.crops: expected one of 1, 3, 10, got True"),
        ("", ("model.pretrained=3",), "model.pretrained: expected bool or str, got 3"),
        ("", ("model.pretrained=''",), "model.pretrained: expected true, false or a path, got ''"),
        ("", ("train.scheduler.milestones=[10,x]",), "train.scheduler.milestones[1]: expected int, got 'x'"),
        ("", ("train.scheduler.milestones=[20,10]",), "train.scheduler.milestones: expected strictly increasing"),
        ("", ("train.scheduler.name=multistep",), "train.scheduler.milestones: multistep needs at least one"),
        ("", ("train.label_smoothing=1",), "train.label_smoothing: must be < 1.0, got 1.0"),
        ("", ("data.root=",), "data.root: expected str, got None"),
        ("train: 3\n", (), "train: expected a mapping, got 3"),
        ("", ("train.lr.x=1",), "train.lr: expected float, got {'x': 1}"),
        ("train:\n  lr: 0.1\n", ("train.lr.x=1",), "train.lr: is a value (0.1), not a section"),
        ("", ("train.lr",), "'train.lr': expected an override of the form section.key=value"),
        ("", ("train.lr=[1,",), "train.lr: cannot parse value '[1,' as YAML"),
        ("- 1\n- 2\n", (), "expected a mapping of sections at the top level, got list"),
    ],
)
def test_errors_name_the_key_and_the_reason(
    tmp_path: Path, text: str, overrides: tuple[str, ...], message: str
) -> None:
    assert message in error_of(tmp_path, text, overrides)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  root: x\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    assert str(info.value).startswith(f"{path}:")
    assert "invalid YAML" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml", [])


def test_dataclasses_validate_when_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"^train\.scheduler\.gamma: must be > 0.0, got 0.0$"):
        SchedulerConfig(gamma=0)
    with pytest.raises(ConfigError, match=r"^data\.backend: expected one of 'auto', 'pyav', 'decord', 'opencv', 'torchcodec', "
                                          r"got 'ffmpeg'$"):
        DataConfig(backend="ffmpeg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^train\.scheduler: expected a mapping"):
        TrainConfig(scheduler={"name": "cosine"})  # type: ignore[arg-type]


def test_dict_round_trip_and_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        ["train.scheduler.name=multistep", "train.scheduler.milestones=[3, 6]", "model.pretrained=w.pth", "train.lr=1e-3"],
    )
    plain = cfg.to_dict()
    assert plain["train"]["scheduler"]["milestones"] == [3, 6]
    assert Config.from_dict(plain) == cfg
    out = tmp_path / "work" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out, []) == cfg
    assert yaml.safe_load(out.read_text()) == plain
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_resolve_path_is_relative_to_data_root(tmp_path: Path) -> None:
    data = DataConfig(root="/data/ucf101")
    assert resolve_path(data, "lists/train.txt") == Path("/data/ucf101/lists/train.txt")
    assert resolve_path(data, "/elsewhere/val.txt") == Path("/elsewhere/val.txt")
    assert resolve_path(DataConfig(root="rel"), "a.txt") == Path("rel/a.txt")
    assert resolve_path(data, "~/x.pth") == Path.home() / "x.pth"


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)
