"""Re-sharding checkpoints: a full model and its Adam state cut into 3 label shards the way a
sharded run saves them, re-sharded to 2 and to 1 and compared with cutting the originals."""

from __future__ import annotations

import json

import pytest
import torch

import shard_workers as w
from xmtc.config import ConfigError, UserError
from xmtc.parallel.groups import label_range
from xmtc.parallel.reshard import (
    check_resume_layout,
    load_shard_states,
    load_unsharded_state,
    model_file,
    read_layout,
    reshard_tag,
)
from xmtc.parallel.optim_state import named_state_file

SHARDED = ("output.weight", "output.bias")


def trained_state():
    """A full model state and its torch AdamW state after two steps (param ids in named order)."""
    torch.manual_seed(0)
    model = w.TinyXML()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for step in range(2):
        x, idx, offsets = w.global_batch(step, 6)
        w.reference_loss(model, model.encode(x), idx, offsets).backward()
        opt.step()
        opt.zero_grad()
    names = [n for n, _ in model.named_parameters()]
    return {k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict(), names


def cut(full: dict, optimizer: dict, names: list[str], num_shards: int, shard: int):
    rows = slice(*label_range(w.L, num_shards, shard))
    module = {k: (v[rows].clone() if k in SHARDED else v) for k, v in full.items()}
    state = {}
    for i, name in enumerate(names):
        state[i] = {k: (v[rows].clone() if name in SHARDED and v.dim() > 0 else v) for k, v in optimizer["state"][i].items()}
    return module, {"state": state, "param_groups": optimizer["param_groups"]}


def write_sharded_tag(tag_dir, full, optimizer, names, num_shards=3):
    tag_dir.mkdir(parents=True)
    for s in range(num_shards):
        module, opt = cut(full, optimizer, names, num_shards, s)
        torch.save({"module": module, "optimizer": opt, "global_steps": 2, "step": 2, "mp_world_size": num_shards},
                   model_file(tag_dir, s))
    layout = {"num_shards": num_shards, "num_labels": w.L, "sharded": list(SHARDED), "zero_stage": 0,
              "optimizer_params": [names]}
    (tag_dir / "label_shards.json").write_text(json.dumps(layout))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.fixture
def run(tmp_path):
    full, optimizer, names = trained_state()
    ckpt = tmp_path / "checkpoints"
    write_sharded_tag(ckpt / "step2", full, optimizer, names)
    (ckpt / "latest").write_text("step2")
    return ckpt, full, optimizer, names


def test_unsharded_state_reassembles_the_full_model(run):
    ckpt, full, _, _ = run
    assert_same(load_unsharded_state(ckpt / "step2"), full)
    from xmtc.checkpoint import load_model_state

    assert_same(load_model_state(ckpt), full)


@pytest.mark.parametrize("to", [1, 2, 4])
def test_reshard_cuts_weights_and_adam_state_like_the_original(run, to):
    ckpt, full, optimizer, names = run
    before = {p.name: p.read_bytes() for p in (ckpt / "step2").iterdir()}
    new_tag = reshard_tag(ckpt, "step2", to)
    assert new_tag == f"step2-shards{to}"
    assert {p.name: p.read_bytes() for p in (ckpt / "step2").iterdir()} == before  # source untouched
    assert (ckpt / "latest").read_text() == "step2"
    new = ckpt / new_tag
    assert read_layout(new)["num_shards"] == to and not (new / "WEIGHTS_ONLY").exists()
    assert sorted(p.name for p in new.glob("mp_rank_*")) == [model_file(new, s).name for s in range(to)]
    for s in range(to):
        module, opt = cut(full, optimizer, names, to, s)
        saved = torch.load(model_file(new, s), weights_only=False)
        assert_same(saved["module"], module)
        assert saved["optimizer"] is None  # DeepSpeed's slot; the state is stored by name beside it
        named = torch.load(named_state_file(new, s), weights_only=False)["params"]
        assert sorted(named) == sorted(names)
        for i, name in enumerate(names):
            assert torch.equal(named[name]["param"], module[name]), name
            assert_same({k: v for k, v in named[name].items() if k != "param"}, opt["state"][i])
        assert saved["global_steps"] == 2 and saved["step"] == 2 and saved["mp_world_size"] == to
    assert_same(load_unsharded_state(new), full)


def test_reshard_never_overwrites_and_leaves_no_partial_tag(run):
    ckpt, *_ = run
    reshard_tag(ckpt, "step2", 2)
    with pytest.raises(UserError, match="already exists"):
        reshard_tag(ckpt, "step2", 2)
    with pytest.raises(UserError, match="between 1 and the 37 labels"):
        reshard_tag(ckpt, "step2", 38)
    for bad in ("sub/tag", "..", "."):  # a tag is a folder directly in checkpoints/ (what `latest` can name)
        with pytest.raises(UserError, match="--new-tag .* must be a folder name"):
            reshard_tag(ckpt, "step2", 1, new_tag=bad, set_latest=True)
    assert (ckpt / "latest").read_text() == "step2"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step2", "step2-shards2"]


def test_reshard_without_optimizer_names_is_weights_only_and_not_resumable(run):
    ckpt, full, _, _ = run
    layout = json.loads((ckpt / "step2" / "label_shards.json").read_text())
    layout["optimizer_params"] = None  # and no optimizer_params.json or ZeRO partitions: nothing names the state
    (ckpt / "step2" / "label_shards.json").write_text(json.dumps(layout))
    reshard_tag(ckpt, "step2", 2, set_latest=True)
    assert (ckpt / "latest").read_text() == "step2-shards2"
    assert not named_state_file(ckpt / "step2-shards2", 0).exists()
    assert_same(load_unsharded_state(ckpt / "step2-shards2"), full)
    with pytest.raises(ConfigError, match="holds weights only"):
        check_resume_layout(ckpt, 2)


def test_resume_with_another_shard_count_stops_naming_the_key_and_the_tool(run):
    ckpt, *_ = run
    check_resume_layout(ckpt, 3)
    with pytest.raises(ConfigError, match=r"'parallel.label_shards' is 2 but .* saved with 3.*xmtc.parallel.reshard .* --to 2"):
        check_resume_layout(ckpt, 2)
    with pytest.raises(ConfigError, match="saved with 3"):
        check_resume_layout(ckpt, 1)


def test_layout_of_an_interrupted_save_is_inferred_from_the_files(run):
    ckpt, full, _, _ = run
    (ckpt / "step2" / "label_shards.json").unlink()
    assert read_layout(ckpt / "step2")["num_shards"] == 3
    assert_same(load_unsharded_state(ckpt / "step2"), full)
    with pytest.raises(UserError, match="lacks label_shards.json"):
        reshard_tag(ckpt, "step2", 1)


def test_cli_reports_the_new_tag(run, capsys):
    from xmtc.parallel.reshard import main

    ckpt, *_ = run
    assert main(["--run", str(ckpt.parent), "--to", "1"]) == 0
    assert "step2-shards1" in capsys.readouterr().out
    assert main(["--run", str(ckpt.parent), "--to", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_sgm_label_head_round_trips_through_one_shard(tmp_path):
    """SGM's label head (L + 1 outputs with EOS) sharded 2 -> 1 -> 3; an unsharded tag has no
    label_shards.json, so the sharded entries are told by the model's keys."""
    torch.manual_seed(1)
    outputs = 8
    names = ("decoder.label_head.weight", "decoder.label_head.bias", "decoder.label_head.embedding")
    full = {names[0]: torch.randn(outputs, 4), names[1]: torch.randn(outputs), names[2]: torch.randn(outputs, 3),
            "encoder.embedding.weight": torch.randn(5, 2)}

    def write(tag_dir, num_shards, layout=True):
        tag_dir.mkdir(parents=True)
        for s in range(num_shards):
            rows = slice(*label_range(outputs, num_shards, s))
            module = {k: (v[rows].clone() if k in names else v) for k, v in full.items()}
            torch.save({"module": module, "optimizer": None, "mp_world_size": num_shards}, model_file(tag_dir, s))
        if layout:
            (tag_dir / "label_shards.json").write_text(json.dumps({"num_shards": num_shards, "num_labels": outputs,
                                                                   "sharded": list(names), "zero_stage": 0}))

    ckpt = tmp_path / "checkpoints"
    write(ckpt / "step2", 2)
    one = reshard_tag(ckpt, "step2", 1)
    assert not (ckpt / one / "label_shards.json").exists() and load_shard_states(ckpt / one)[0]["sharded"] == list(names)
    three = reshard_tag(ckpt, one, 3)
    for s in range(3):
        rows = slice(*label_range(outputs, 3, s))
        assert_same(torch.load(model_file(ckpt / three, s), weights_only=False)["module"],
                    {k: (v[rows] if k in names else v) for k, v in full.items()})
    write(ckpt / "step4", 2, layout=False)  # a save interrupted before label_shards.json
    assert_same(load_unsharded_state(ckpt / "step4"), full)


@pytest.mark.parametrize("text", ['{"num_shards": 3,', "[3]", '{"sharded": []}', '{"num_shards": "3"}', '{"num_shards": 0}'])
def test_a_damaged_layout_file_is_one_sentence(run, capsys, text):
    """A label_shards.json that is cut short or holds no shard count: resume, re-shard and predict/evaluate
    (load_model_state) stop with one sentence naming the file, not a JSONDecodeError/KeyError traceback."""
    ckpt, *_ = run
    layout = ckpt / "step2" / "label_shards.json"
    layout.write_text(text)
    for call in (lambda: read_layout(ckpt / "step2"), lambda: check_resume_layout(ckpt, 3),
                 lambda: load_unsharded_state(ckpt / "step2")):
        with pytest.raises(UserError, match=f"{layout} is damaged"):
            call()
    from xmtc.parallel.reshard import main

    assert main(["--run", str(ckpt.parent), "--to", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {layout} is damaged") and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step2"]


def write_zero_tag(tag_dir, full, moments, groups, num_shards, dp):
    """`full` cut into `num_shards` label shards as a ZeRO-1/2 run of `dp` replicas per shard saves them:
    per shard, each parameter group flattened and cut into `dp` consecutive partitions (a parameter may
    span two), each rank's file naming its fragments' (start, numel) in its partition."""
    from deepspeed.utils.tensor_fragment import fragment_address

    tag_dir.mkdir(parents=True)
    for s in range(num_shards):
        rows = slice(*label_range(w.L, num_shards, s))

        def piece(name, value):
            return value[rows] if name in SHARDED else value

        module = {n: piece(n, v).clone() for n, v in full.items()}
        torch.save({"module": module, "optimizer": None, "global_steps": 2, "mp_world_size": num_shards},
                   model_file(tag_dir, s))
        flats = [{k: torch.cat([piece(n, full[n] if k == "param" else moments[n][k]).flatten() for n in g])
                  for k in ("param", "exp_avg", "exp_avg_sq")} for g in groups]
        for d in range(dp):
            mappings, fp32, state = [], [], {}
            for gi, g in enumerate(groups):
                total = flats[gi]["param"].numel()
                size = -(-total // dp)
                lo, hi = min(total, d * size), min(total, (d + 1) * size)
                mapping, offset = {}, 0
                for n in g:
                    numel = piece(n, full[n]).numel()
                    a, b = max(lo, offset), min(hi, offset + numel)
                    if a < b:
                        mapping[n] = fragment_address(numel=b - a, start=a - lo)
                    offset += numel
                mappings.append(mapping)
                fp32.append(flats[gi]["param"][lo:hi].clone())
                state[gi] = {"exp_avg": flats[gi]["exp_avg"][lo:hi].clone(),
                             "exp_avg_sq": flats[gi]["exp_avg_sq"][lo:hi].clone(), "step": torch.tensor(2.0)}
            optimizer = {"param_slice_mappings": mappings, "single_partition_of_fp32_groups": fp32,
                         "base_optimizer_state": {"state": state, "param_groups": []},
                         "partition_count": [dp] * len(groups)}  # as DeepSpeed's ZeRO-1/2 and bf16 optimizers save it
            torch.save({"optimizer_state_dict": optimizer}, tag_dir / f"zero_pp_rank_{d}_mp_rank_{s:02d}_optim_states.pt")
    if num_shards > 1:
        (tag_dir / "label_shards.json").write_text(json.dumps({"num_shards": num_shards, "num_labels": w.L,
                                                               "sharded": list(SHARDED), "zero_stage": 2}))


@pytest.mark.parametrize("shards, dp, to", [(1, 3, 2), (2, 2, 1), (3, 2, 4), (4, 3, 3), (2, 1, 5)])
def test_reshard_of_zero_partitions_equals_slicing_the_unsharded_state(tmp_path, shards, dp, to):
    """A ZeRO-1/2 source of any shard count and replica count, re-sharded to `to`: every new shard's master
    weights, both Adam moments and step are the unsharded tensors' rows of that shard (no row lost or doubled)."""
    full, optimizer, names = trained_state()
    moments = {n: {k: optimizer["state"][i][k] for k in ("exp_avg", "exp_avg_sq")} for i, n in enumerate(names)}
    groups = [[n for n in names if full[n].dim() > 1], [n for n in names if full[n].dim() == 1]]
    ckpt = tmp_path / "checkpoints"
    write_zero_tag(ckpt / "step2", full, moments, groups, shards, dp)
    new = ckpt / reshard_tag(ckpt, "step2", to)
    for t in range(to):
        rows = slice(*label_range(w.L, to, t))
        named = torch.load(named_state_file(new, t), weights_only=False)["params"]
        assert sorted(named) == sorted(names)
        for n in names:
            want = {"param": full[n], **moments[n]}
            for key, value in want.items():
                assert torch.equal(named[n][key], value[rows] if n in SHARDED else value), (n, key, t)
            assert float(named[n]["step"]) == 2.0
    assert_same(load_unsharded_state(new), full)


@pytest.mark.parametrize("text", ['[["a", "b"]', '{"a": 1}', '[["a", 3]]'])
def test_a_damaged_optimizer_names_file_is_one_sentence(tmp_path, text):
    # optimizer_params.json (the names of a ZeRO tag's optimizer state, for re-sharding) cut short or of another
    # shape gave a JSONDecodeError traceback, or a TypeError further on.
    from xmtc.parallel.optim_state import OPTIMIZER_PARAMS_FILE, read_optimizer_names

    (tmp_path / OPTIMIZER_PARAMS_FILE).write_text(text)
    with pytest.raises(UserError, match=f"{tmp_path / OPTIMIZER_PARAMS_FILE} is damaged .*: use another checkpoint tag$"):
        read_optimizer_names(tmp_path, {"num_shards": 2})
    (tmp_path / OPTIMIZER_PARAMS_FILE).write_text('[["a", "b"], ["c"]]')
    assert read_optimizer_names(tmp_path, {"num_shards": 2}) == [["a", "b"], ["c"]]
    assert read_optimizer_names(tmp_path, {"optimizer_params": [["x"]]}) == [["x"]]  # the layout's own list first


def test_a_resharded_step_count_takes_the_type_its_optimizer_counts_in():
    # torch's Adam(W) keep `step` as a tensor; DeepSpeed's FusedAdam and CPU Adam as a Python int that they hand to
    # their kernels. A re-sharded tag gave every optimizer a float tensor, which those kernels cannot take.
    from xmtc.parallel.optim_state import _step_tensor

    class DeepSpeedAdam:  # the class's module is what tells DeepSpeed's optimizers apart
        __module__ = "deepspeed.ops.adam.cpu_adam"

    torch_adam = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    step = _step_tensor(torch.tensor(7.0), None, {}, torch.device("cpu"), DeepSpeedAdam())
    assert type(step) is int and step == 7
    step = _step_tensor(7, None, torch_adam.param_groups[0], torch.device("cpu"), torch_adam)
    assert torch.is_tensor(step) and step.dtype == torch.float32 and step.item() == 7.0
    # Where the optimizer has stepped already, its own step's type decides.
    assert _step_tensor(torch.tensor(3.0), 1, {}, torch.device("cpu"), torch_adam) == 3
    like = torch.tensor(1.0, dtype=torch.float64)
    assert _step_tensor(5, like, {}, torch.device("cpu"), DeepSpeedAdam()).dtype == torch.float64


def test_a_latest_that_names_no_tag_lists_only_resumable_tags(tmp_path):
    # A killed re-shard leaves `.<tag>.tmp<pid>` behind: it was offered as a checkpoint to resume from.
    for tag in ("step2", ".step4.tmp123", "step10"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    (tmp_path / "latest").write_text("step99")
    with pytest.raises(UserError, match=r"names 'step99', which is not a checkpoint there; .*\(checkpoints there: step2, step10\)$"):
        check_resume_layout(tmp_path, 1)


def test_a_zero_tag_without_its_last_partition_is_refused(tmp_path):
    # Partitions 0..n-2 of n look complete by their names alone; where the missing one started at a parameter's first
    # element, re-sharding went through and the resume stopped later, on a parameter the state lacked.
    full, optimizer, names = trained_state()
    moments = {n: {k: optimizer["state"][i][k] for k in ("exp_avg", "exp_avg_sq")} for i, n in enumerate(names)}
    groups = [[n for n in names if full[n].dim() > 1], [n for n in names if full[n].dim() == 1]]
    ckpt = tmp_path / "checkpoints"
    write_zero_tag(ckpt / "step2", full, moments, groups, 2, 3)
    (ckpt / "step2" / "zero_pp_rank_2_mp_rank_01_optim_states.pt").unlink()
    with pytest.raises(UserError, match=r"step2 holds 2 ZeRO partitions of shard 1, written by 3 ranks; the tag is incomplete"):
        reshard_tag(ckpt, "step2", 1)
    assert sorted(p.name for p in ckpt.iterdir()) == ["step2"]
