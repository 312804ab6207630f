"""State-dict keys of the official GFNet checkpoints -> this project's GFNet, by explicit rules.

An official checkpoint holds four state dicts: ``model_prime_state_dict`` (global encoder),
``model_state_dict`` (local encoder), ``fc`` (classifier) and ``policy``. Each key is
translated by the rules of its part and layout below; nothing is matched by position. The
result must then cover our model's state dict exactly, tensor by tensor with equal shapes
(``check_against``), or the import stops with an error naming the keys.

Encoder layouts (ours: ``Backbone``: ``body`` = the network up to its last feature map,
``neck`` = what turns the pooled features into the feature vector, ``head`` = its classifier):

- resnet (torchvision layout): conv1, bn1, layer1..4 -> body.0, body.1, body.4..7; fc -> head.
- densenet (torchvision layout): features.* -> body.*; classifier -> head.
- regnet (pycls): stem.conv/bn -> body.0.0/1; s{i}.b{j} -> body.1.block{i}.block{i}-{j-1} with
  proj/bn -> proj.0/1, f.a/a_bn -> f.a.0/1 (b, c alike), f.se.f_ex.0/2 -> f.se.fc1/fc2;
  fc -> head.
- mobilenetv3 / efficientnet (gen-efficientnet): conv_stem/bn1 -> body.0.0/1; blocks.{s}.{i}
  -> one torchvision block (mobilenetv3: body.{n} numbering the blocks of all stages in order
  from 1; efficientnet: body.{s+1}.{i}), its layers by block type (``_GEN_BLOCK``); the head:
  mobilenetv3's 1x1 conv_head on the pooled features -> neck.0 (a Linear: weight reshaped
  (O, I, 1, 1) -> (O, I)), classifier -> head; efficientnet's conv_head/bn2 -> the last body
  block's 0/1, classifier -> head.1.

Classifier: GRU (``rnn.*_l0``) -> classifier.gru.*, its one ``fc`` -> classifier.heads.0;
concat ``fc_k`` (features of k steps) -> classifier.heads.{k-2} (the official module always
has fc_2 .. fc_5; those beyond T steps are never used and are dropped, with a note).
Policy: ``state_encoder.{i}`` -> encoder.{i+1} (MLP: ours starts with a Flatten) or
encoder.{i} (1x1 conv); ``gru.*_l0`` -> gru.*; ``actor.0`` -> actor; ``critic.0`` -> critic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from ..errors import CheckpointError

Rule = tuple[str, Callable[[re.Match], str] | str]


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys saved from an nn.DataParallel / DistributedDataParallel wrapper start 'module.'."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _apply_rules(key: str, rules: list[Rule]) -> str | None:
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m:
            tail = key[m.end():]
            return (repl(m) if callable(repl) else repl) + tail
    return None


# ---------------------------------------------------------------------- encoders
_RESNET: list[Rule] = [
    (r"conv1\.", "body.0."), (r"bn1\.", "body.1."),
    (r"layer([1-4])\.", lambda m: f"body.{3 + int(m[1])}."), (r"fc\.", "head."),
]

_DENSENET: list[Rule] = [(r"features\.", "body."), (r"classifier\.", "head.")]

_REGNET_BLOCK = {"proj": "proj.0", "bn": "proj.1", "f.a": "f.a.0", "f.a_bn": "f.a.1", "f.b": "f.b.0",
                 "f.b_bn": "f.b.1", "f.c": "f.c.0", "f.c_bn": "f.c.1", "f.se.f_ex.0": "f.se.fc1",
                 "f.se.f_ex.2": "f.se.fc2"}
_REGNET: list[Rule] = [
    (r"stem\.conv\.", "body.0.0."), (r"stem\.bn\.", "body.0.1."), (r"fc\.", "head."),
    # s<i>.b<j>.<layer>. -> body.1.block<i>.block<i>-<j - 1>.<torchvision layer>.
    (rf"s(\d+)\.b(\d+)\.({'|'.join(map(re.escape, _REGNET_BLOCK))})\.",
     lambda m: f"body.1.block{m[1]}.block{m[1]}-{int(m[2]) - 1}.{_REGNET_BLOCK[m[3]]}."),
]

# gen-efficientnet block layers -> the index in torchvision's block.<i> (None: SE, see below)
_GEN_BLOCK = {
    # depthwise-separable (no expansion): dw conv/bn, [SE], pointwise conv/bn
    "ds": {"conv_dw": (0, 0), "bn1": (0, 1), "conv_pw": ("last", 0), "bn2": ("last", 1)},
    # inverted residual: expansion conv/bn, dw conv/bn, [SE], projection conv/bn
    "ir": {"conv_pw": (0, 0), "bn1": (0, 1), "conv_dw": (1, 0), "bn2": (1, 1), "conv_pwl": ("last", 0),
           "bn3": ("last", 1)},
}
_SE = {"conv_reduce": "fc1", "conv_expand": "fc2"}


def _gen_blocks(state: Mapping[str, torch.Tensor]) -> dict[tuple[int, int], tuple[str, bool]]:
    """(stage, index) -> (block type "ds" | "ir" | "cn", whether it has squeeze-excite) from the
    layer names a block holds."""
    layers: dict[tuple[int, int], set[str]] = {}
    for k in state:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.([a-z_]+)", k)
        if m:
            layers.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    blocks = {}
    for pos, names in layers.items():
        if "conv_pwl" in names:
            kind = "ir"
        elif "conv_dw" in names:
            kind = "ds"
        elif "conv" in names:
            kind = "cn"  # a plain conv + bn + activation (MobileNet-V3's last block)
        else:
            raise CheckpointError(f"encoder block blocks.{pos[0]}.{pos[1]} has no layer this importer "
                                  f"knows ({', '.join(sorted(names))})")
        blocks[pos] = (kind, "se" in names)
    return blocks


def _gen_block_key(kind: str, has_se: bool, rest: str) -> str | None:
    """A key inside one gen-efficientnet block -> the key inside the torchvision block."""
    layer, _, tail = rest.partition(".")
    if kind == "cn":
        index = {"conv": "0", "bn1": "1"}.get(layer)
        return None if index is None else f"{index}.{tail}"
    if layer == "se":
        sub, _, tail2 = tail.partition(".")
        se_index = 1 if kind == "ds" else 2
        return f"block.{se_index}.{_SE[sub]}.{tail2}" if sub in _SE else None
    where = _GEN_BLOCK[kind].get(layer)
    if where is None:
        return None
    i, j = where
    if i == "last":
        i = (1 if kind == "ds" else 2) + int(has_se)
    return f"block.{i}.{j}.{tail}"


def _translate_gen(state: Mapping[str, torch.Tensor], flat: bool) -> dict[str, str]:
    """gen-efficientnet keys -> ours. ``flat``: MobileNet-V3 (blocks numbered through all
    stages, 1x1-conv head on pooled features) else EfficientNet (a Sequential per stage)."""
    blocks = _gen_blocks(state)
    order = sorted(blocks)
    flat_index = {pos: n + 1 for n, pos in enumerate(order)}
    stages = 1 + max((s for s, _ in order), default=-1)
    top_rules: list[Rule] = [(r"conv_stem\.", "body.0.0."), (r"bn1\.", "body.0.1.")] + (
        [(r"conv_head\.", "neck.0."), (r"classifier\.", "head.")] if flat else
        [(r"conv_head\.", f"body.{stages + 1}.0."), (r"bn2\.", f"body.{stages + 1}.1."),
         (r"classifier\.", "head.1.")])
    out = {}
    for k in state:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.(.*)$", k)
        if m:
            pos = (int(m[1]), int(m[2]))
            inner = _gen_block_key(*blocks[pos], m[3])
            if inner is None:
                continue
            prefix = f"body.{flat_index[pos]}." if flat else f"body.{pos[0] + 1}.{pos[1]}."
            out[k] = prefix + inner
            continue
        top = _apply_rules(k, top_rules)
        if top is not None:
            out[k] = top
    return out


def _translate_rules(state: Mapping[str, torch.Tensor], rules: list[Rule]) -> dict[str, str]:
    out = {}
    for k in state:
        t = _apply_rules(k, rules)
        if t is not None:
            out[k] = t
    return out


ENCODER_LAYOUTS: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, str]]] = {
    "resnet": lambda sd: _translate_rules(sd, _RESNET),
    "densenet": lambda sd: _translate_rules(sd, _DENSENET),
    "regnet": lambda sd: _translate_rules(sd, _REGNET),
    "mobilenetv3": lambda sd: _translate_gen(sd, flat=True),
    "efficientnet": lambda sd: _translate_gen(sd, flat=False),
}


# ---------------------------------------------------------------------- classifier, policy
# whole-key rules of the classifier and the policy: (pattern, our key of a match, or None: dropped)
KeyRule = tuple[str, Callable[[re.Match], str | None]]
_GRU = r"(weight_ih|weight_hh|bias_ih|bias_hh)_l0"  # nn.GRU's layer 0 -> nn.GRUCell


def _map_keys(state: Mapping[str, torch.Tensor], rules: list[KeyRule]) -> tuple[dict[str, str], list[str]]:
    """(official -> ours, official keys a rule drops); the first rule whose pattern matches the
    whole key decides. Keys no rule matches are left out (``translate`` reports them)."""
    out, dropped = {}, []
    for k in state:
        for pattern, ours in rules:
            m = re.fullmatch(pattern, k)
            if m:
                name = ours(m)
                if name is None:
                    dropped.append(k)
                else:
                    out[k] = name
                break
    return out, dropped


def classifier_keys(state: Mapping[str, torch.Tensor], steps: int) -> tuple[dict[str, str], list[str]]:
    """(official -> ours, official keys dropped as unused at ``steps`` steps)."""
    return _map_keys(state, [
        (rf"rnn\.{_GRU}", lambda m: f"classifier.gru.{m[1]}"),
        (r"fc\.(weight|bias)", lambda m: f"classifier.heads.0.{m[1]}"),
        (r"fc_(\d+)\.(weight|bias)",
         lambda m: f"classifier.heads.{int(m[1]) - 2}.{m[2]}" if int(m[1]) <= steps else None),
    ])


def policy_keys(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    conv = state.get("state_encoder.0.weight") is not None and state["state_encoder.0.weight"].dim() == 4
    first = 0 if conv else 1  # our MLP state encoder starts with a Flatten
    return _map_keys(state, [
        (r"state_encoder\.(\d+)\.(weight|bias)", lambda m: f"policy.encoder.{int(m[1]) + first}.{m[2]}"),
        (rf"gru\.{_GRU}", lambda m: f"policy.gru.{m[1]}"),
        (r"(actor|critic)\.0\.(weight|bias)", lambda m: f"policy.{m[1]}.{m[2]}"),
    ])[0]


# ---------------------------------------------------------------------- the whole model
PARTS = (("model_prime_state_dict", "global_encoder"), ("model_state_dict", "local_encoder"),
         ("fc", "classifier"), ("policy", "policy"))


def translate(parts: Mapping[str, Mapping[str, torch.Tensor]], layout: str, steps: int
              ) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str], list[str]]:
    """Official state dicts (by checkpoint field) -> {our key: (official name, tensor)}, the
    official keys no rule knows (``field:key``), and the keys dropped on purpose."""
    if layout not in ENCODER_LAYOUTS:
        raise CheckpointError(f"no key layout {layout!r}")
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    unknown: list[str] = []
    dropped: list[str] = []
    for field, ours in PARTS:
        state = parts[field]
        if ours.endswith("encoder"):
            names = {k: f"{ours}.{v}" for k, v in ENCODER_LAYOUTS[layout](state).items()}
        elif ours == "classifier":
            names, drop = classifier_keys(state, steps)
            dropped += [f"{field}:{k}" for k in drop]
        else:
            names = policy_keys(state)
        for k, v in state.items():
            if k in names:
                mapped[names[k]] = (f"{field}:{k}", v)
            elif f"{field}:{k}" not in dropped:
                unknown.append(f"{field}:{k}")
    return mapped, unknown, dropped


def _fits(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """Same shape, or a 1x1 conv weight (O, I, 1, 1) for a Linear weight (O, I)."""
    if src.shape == dst.shape:
        return True
    return src.dim() == 4 and dst.dim() == 2 and tuple(src.shape) == (*dst.shape, 1, 1)


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_against(mapped: dict[str, tuple[str, torch.Tensor]], unknown: list[str],
                  target: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Our state dict from the translated tensors, after checking that they cover ``target``
    exactly with fitting shapes; CheckpointError naming the first offending keys otherwise."""
    if unknown:
        raise CheckpointError(f"{what}: {len(unknown)} unexpected key(s) this architecture does not have: "
                              f"{_few(sorted(unknown))}")
    missing = sorted(k for k in target if k not in mapped)
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} missing key(s): {_few(missing)} "
                              "(the checkpoint is incomplete or of another architecture)")
    extra = sorted(mapped[k][0] for k in mapped if k not in target)
    if extra:
        raise CheckpointError(f"{what}: {len(extra)} key(s) the model has no place for: {_few(extra)}")
    out = {}
    for k, dst in target.items():
        name, src = mapped[k]
        if not isinstance(src, torch.Tensor):
            raise CheckpointError(f"{what}: {name} is a {type(src).__name__}, not a tensor")
        if not _fits(src, dst):
            raise CheckpointError(f"{what}: shape mismatch at {name}: checkpoint {tuple(src.shape)}, "
                                  f"model {tuple(dst.shape)} ({k}); wrong --arch or --patch-size?")
        out[k] = src.reshape(dst.shape).to(dst.dtype)
    return out


__all__ = ["ENCODER_LAYOUTS", "PARTS", "check_against", "classifier_keys", "policy_keys",
           "strip_module_prefix", "translate"]
