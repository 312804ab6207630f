"""An independent model of the official GFNet release, for the import tests.

Two pieces, written for these tests from reading the release (no code of it is used):

- ``official_state_dicts``: random state dicts with the release's key names and shapes
  (encoders in the layout each official backbone module saves, the ``Full_layer`` classifier,
  the ``ActorCritic`` policy), batch-norm statistics away from their defaults;
- ``official_inference``: the release's inference path computed from those state dicts
  directly: glance = F.interpolate of the normalised image (align_corners=True), integer patch
  crops at floor(a * (H - P)), each encoder run layer by layer from its own keys, the GRU /
  concatenating classifier, the policy.

Neither goes through gfnet's key translation, so comparing the imported model against
``official_inference`` checks the translation and the model options end to end. (ResNet and
DenseNet are torchvision's modules in the release; both sides use torchvision's modules for
them, loaded under the release's key names.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# model_name -> layout (of the encoders' state dicts), gru (a GRU classifier, else the concat
# heads fc_2 .. fc_5), mlp (an MLP state encoder in the policy, else a 1x1 conv), glance (the
# glance's interpolation mode), hidden (the policy's GRU width) and, by family, design (RegNet:
# depth, w_0, w_a, w_m, group width) or width / depth (gen-efficientnet's channel / block multipliers)
ARCHS: dict[str, dict[str, Any]] = {
    "resnet50": dict(layout="resnet", gru=True, mlp=True, glance="bicubic", hidden=1024),
    "densenet121": dict(layout="densenet", gru=True, mlp=True, glance="bilinear", hidden=1024),
    "densenet169": dict(layout="densenet", gru=True, mlp=True, glance="bilinear", hidden=1024),
    "densenet201": dict(layout="densenet", gru=True, mlp=True, glance="bilinear", hidden=1024),
    "regnety_600m": dict(layout="regnet", gru=True, mlp=False, glance="bilinear", hidden=256,
                         design=(15, 48, 32.54, 2.32, 16)),
    "regnety_800m": dict(layout="regnet", gru=True, mlp=False, glance="bilinear", hidden=256,
                         design=(14, 56, 38.84, 2.4, 16)),
    "regnety_1.6g": dict(layout="regnet", gru=True, mlp=False, glance="bilinear", hidden=256,
                         design=(27, 48, 20.71, 2.65, 24)),
    "mobilenetv3_large_100": dict(layout="mobilenetv3", gru=False, mlp=False, glance="bicubic", hidden=256,
                                  width=1.0),
    "mobilenetv3_large_125": dict(layout="mobilenetv3", gru=False, mlp=False, glance="bicubic", hidden=256,
                                  width=1.25),
    "efficientnet_b2": dict(layout="efficientnet", gru=False, mlp=False, glance="bicubic", hidden=256,
                            width=1.1, depth=1.2),
    "efficientnet_b3": dict(layout="efficientnet", gru=False, mlp=False, glance="bicubic", hidden=256,
                            width=1.2, depth=1.4),
}


# ---------------------------------------------------------------------- architecture specs
def _div8(v: float) -> int:
    """Round to a multiple of 8 (at least 8), not more than 10 % down."""
    n = max(8, int(v + 4) // 8 * 8)
    return n + 8 if n < 0.9 * v else n


# MobileNet-V3-Large as gen-efficientnet defines it: stages of block groups (kind, repeats,
# kernel, stride of the first block, expansion, out channels, squeeze-excite, activation)
_MBV3 = [
    [("ds", 1, 3, 1, 1, 16, False, "relu")],
    [("ir", 1, 3, 2, 4, 24, False, "relu"), ("ir", 1, 3, 1, 3, 24, False, "relu")],
    [("ir", 3, 5, 2, 3, 40, True, "relu")],
    [("ir", 1, 3, 2, 6, 80, False, "hswish"), ("ir", 1, 3, 1, 2.5, 80, False, "hswish"),
     ("ir", 2, 3, 1, 2.3, 80, False, "hswish")],
    [("ir", 2, 3, 1, 6, 112, True, "hswish")],
    [("ir", 3, 5, 2, 6, 160, True, "hswish")],
    [("cn", 1, 1, 1, 1, 960, False, "hswish")],
]
# EfficientNet-B0 stages: (kind, repeats, kernel, stride, expansion, out channels)
_EFFNET = [("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
           ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320)]


def gen_blocks(name: str) -> tuple[int, list[list[dict]], int]:
    """(stem channels, stages of block specs, head channels) of a gen-efficientnet model."""
    a = ARCHS[name]
    w = a["width"]
    stem = _div8(16 * w) if a["layout"] == "mobilenetv3" else _div8(32 * w)
    cin = stem
    stages = []
    if a["layout"] == "mobilenetv3":
        for stage in _MBV3:
            blocks = []
            for kind, reps, k, s, e, c, se, act in stage:
                for j in range(reps):
                    out = _div8(c * w)
                    mid = cin if kind != "ir" else _div8(cin * e)
                    blocks.append(dict(kind=kind, k=k, stride=s if j == 0 else 1, cin=cin, mid=mid, out=out,
                                       se=_div8(mid * 0.25) if se else 0, act=act, gate="hsigmoid", se_act="relu"))
                    cin = out
            stages.append(blocks)
        return stem, stages, 1280
    for kind, reps, k, s, e, c in _EFFNET:
        blocks = []
        for j in range(int(math.ceil(reps * a["depth"]))):
            out = _div8(c * w)
            mid = cin if kind == "ds" else _div8(cin * e)
            blocks.append(dict(kind=kind, k=k, stride=s if j == 0 else 1, cin=cin, mid=mid, out=out,
                               se=max(1, int(cin * 0.25 + 0.5)), act="swish", gate="sigmoid", se_act="swish"))
            cin = out
        stages.append(blocks)
    return stem, stages, _div8(1280 * w)


def regnet_stages(name: str) -> list[tuple[int, int, int]]:
    """(width, depth, group width) per stage, from the RegNet design as pycls quantises it."""
    depth, w0, wa, wm, gw = ARCHS[name]["design"]
    ws = []
    for j in range(depth):
        k = round(math.log((w0 + wa * j) / w0) / math.log(wm))
        ws.append(int(round(w0 * wm ** k / 8) * 8))
    stages: list[list[int]] = []
    for w in ws:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    out = []
    for w, d in stages:
        g = min(gw, w)
        out.append((int(round(w / g) * g), d, g))
    return out


# ---------------------------------------------------------------------- state dicts
class _Filler:
    """Random tensors of given keys and shapes. Weights are He-scaled and the batch norm that
    closes a residual branch gets a small scale (0.1 .. 0.3), so activations stay O(1) through
    50 random layers: float32 rounding then stays far below the 1e-4 the tests allow, and no
    focus location lands within float noise of a pixel boundary by accident."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def normal(self, key: str, shape, std: float) -> None:
        self.sd[key] = torch.randn(*shape, generator=self.g) * std

    def conv(self, key: str, cout: int, cin_per_group: int, k: int, bias: bool = False, gain: float = 2.0) -> None:
        self.normal(f"{key}.weight", (cout, cin_per_group, k, k), math.sqrt(gain / (cin_per_group * k * k)))
        if bias:
            self.normal(f"{key}.bias", (cout,), 0.1)

    def linear(self, key: str, cout: int, cin: int, bias: bool = True, gain: float = 1.0) -> None:
        self.normal(f"{key}.weight", (cout, cin), math.sqrt(gain / cin))
        if bias:
            self.normal(f"{key}.bias", (cout,), 0.1)

    def bn(self, key: str, c: int, closes_residual: bool = False) -> None:
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(c, generator=self.g)  # noqa: E731
        self.sd[f"{key}.weight"] = u(0.1, 0.3) if closes_residual else u(0.6, 1.2)
        self.sd[f"{key}.bias"] = torch.randn(c, generator=self.g) * 0.1
        self.sd[f"{key}.running_mean"] = torch.randn(c, generator=self.g) * 0.2
        self.sd[f"{key}.running_var"] = u(0.5, 2.0)
        self.sd[f"{key}.num_batches_tracked"] = torch.tensor(1000 + int(self.g.initial_seed() % 97))

    def randomise_like(self, template: dict[str, torch.Tensor]) -> None:
        """Random values for a torchvision state dict's keys and shapes."""
        for k, v in template.items():
            if k.endswith("num_batches_tracked"):
                self.sd[k] = torch.tensor(1000)
            elif k.endswith("bn3.weight"):  # a bottleneck's last batch norm: small, see _Filler
                self.sd[k] = 0.1 + 0.2 * torch.rand(v.shape, generator=self.g)
            elif k.endswith("running_var") or (k.endswith(".weight") and v.dim() == 1):
                self.sd[k] = 0.6 + 0.6 * torch.rand(v.shape, generator=self.g)
            elif k.endswith("running_mean") or k.endswith(".bias"):
                self.sd[k] = torch.randn(v.shape, generator=self.g) * 0.1
            else:
                fan_in = v[0].numel()
                self.sd[k] = torch.randn(v.shape, generator=self.g) * math.sqrt((2.0 if v.dim() == 4 else 1.0) / fan_in)


def _encoder_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    import torchvision

    a = ARCHS[name]
    f = _Filler(seed)
    if a["layout"] in ("resnet", "densenet"):
        f.randomise_like(torchvision.models.get_model(name).state_dict())
        return f.sd
    if a["layout"] == "regnet":
        f.conv("stem.conv", 32, 3, 3)
        f.bn("stem.bn", 32)
        win = 32
        for i, (w, d, g) in enumerate(regnet_stages(name), start=1):
            for j in range(1, d + 1):
                b = f"s{i}.b{j}"
                if j == 1:  # the first block of a stage halves the size: projected shortcut
                    f.conv(f"{b}.proj", w, win, 1, gain=1.0)
                    f.bn(f"{b}.bn", w)
                f.conv(f"{b}.f.a", w, win, 1)
                f.bn(f"{b}.f.a_bn", w)
                f.conv(f"{b}.f.b", w, g, 3)
                f.bn(f"{b}.f.b_bn", w)
                se = int(round(0.25 * win))
                f.conv(f"{b}.f.se.f_ex.0", se, w, 1, bias=True)
                f.conv(f"{b}.f.se.f_ex.2", w, se, 1, bias=True, gain=1.0)
                f.conv(f"{b}.f.c", w, w, 1, gain=1.0)
                f.bn(f"{b}.f.c_bn", w, closes_residual=True)
                win = w
        f.linear("fc", 1000, win)
        return f.sd
    stem, stages, head = gen_blocks(name)
    f.conv("conv_stem", stem, 3, 3)
    f.bn("bn1", stem)
    for s, blocks in enumerate(stages):
        for i, b in enumerate(blocks):
            p = f"blocks.{s}.{i}"
            if b["kind"] == "cn":
                f.conv(f"{p}.conv", b["out"], b["cin"], 1)
                f.bn(f"{p}.bn1", b["out"])
                continue
            if b["kind"] == "ir":
                f.conv(f"{p}.conv_pw", b["mid"], b["cin"], 1)
                f.bn(f"{p}.bn1", b["mid"])
            f.conv(f"{p}.conv_dw", b["mid"], 1, b["k"])
            f.bn(f"{p}.bn1" if b["kind"] == "ds" else f"{p}.bn2", b["mid"])
            if b["se"]:
                f.conv(f"{p}.se.conv_reduce", b["se"], b["mid"], 1, bias=True)
                f.conv(f"{p}.se.conv_expand", b["mid"], b["se"], 1, bias=True, gain=1.0)
            last = "conv_pw" if b["kind"] == "ds" else "conv_pwl"
            f.conv(f"{p}.{last}", b["out"], b["mid"], 1, gain=1.0)
            f.bn(f"{p}.bn2" if b["kind"] == "ds" else f"{p}.bn3", b["out"],
                 closes_residual=b["stride"] == 1 and b["cin"] == b["out"])
    last = stages[-1][-1]["out"]
    if ARCHS[name]["layout"] == "mobilenetv3":
        f.conv("conv_head", head, last, 1, bias=True)
    else:
        f.conv("conv_head", head, last, 1)
        f.bn("bn2", head)
    f.linear("classifier", 1000, head)
    return f.sd


def feature_dims(name: str) -> tuple[int, int]:
    """(pooled feature dim, feature map channels) of an official encoder."""
    layout = ARCHS[name]["layout"]
    if layout == "resnet":
        return 2048, 2048
    if layout == "densenet":
        d = {"densenet121": 1024, "densenet169": 1664, "densenet201": 1920}[name]
        return d, d
    if layout == "regnet":
        w = regnet_stages(name)[-1][0]
        return w, w
    stem, stages, head = gen_blocks(name)
    if layout == "mobilenetv3":
        return head, stages[-1][-1]["out"]
    return head, head


def official_state_dicts(name: str, patch_size: int, seed: int = 0) -> dict[str, dict]:
    """The four state dicts of an official checkpoint, random, keys and shapes as released."""
    a = ARCHS[name]
    dim, fmap_c = feature_dims(name)
    side = math.ceil(patch_size / 32)
    fc = _Filler(seed + 2)
    if a["gru"]:
        h = 1024
        for p, shape in (("weight_ih", (3 * h, dim)), ("weight_hh", (3 * h, h)), ("bias_ih", (3 * h,)),
                         ("bias_hh", (3 * h,))):
            fc.normal(f"rnn.{p}_l0", shape, 1 / math.sqrt(h))
        fc.linear("fc", 1000, h, gain=4.0)
    else:
        for k in range(2, 6):  # the official Full_layer always has fc_2 .. fc_5
            fc.linear(f"fc_{k}", 1000, k * dim, gain=2.0)
    pol = _Filler(seed + 3)
    hid = a["hidden"]
    if a["mlp"]:
        pol.linear("state_encoder.0", 2048, fmap_c * side * side, gain=2.0)
        pol.linear("state_encoder.2", hid, 2048, gain=2.0)
    else:
        pol.conv("state_encoder.0", 32, fmap_c, 1)
        pol.linear("state_encoder.3", hid, 32 * side * side, gain=2.0)
    for p, shape in (("weight_ih", (3 * hid, hid)), ("weight_hh", (3 * hid, hid)), ("bias_ih", (3 * hid,)),
                     ("bias_hh", (3 * hid,))):
        pol.normal(f"gru.{p}_l0", shape, 1 / math.sqrt(hid))
    pol.linear("actor.0", 2, hid, gain=4.0)
    pol.linear("critic.0", 1, hid)
    return {"model_prime_state_dict": _encoder_state(name, seed), "model_state_dict": _encoder_state(name, seed + 1),
            "fc": fc.sd, "policy": pol.sd}


def released_checkpoint(name: str, patch_size: int, steps: int, seed: int = 0, *, data_parallel: bool = True
                        ) -> dict[str, Any]:
    """A whole released-format checkpoint: the state dicts (encoders with DataParallel's
    'module.' prefix, as inference.py loads them) and made-up figures of the right shapes."""
    sd = official_state_dicts(name, patch_size, seed)
    if data_parallel:
        for k in ("model_state_dict", "model_prime_state_dict"):
            sd[k] = {f"module.{n}": v for n, v in sd[k].items()}
    g = torch.Generator().manual_seed(seed + 9)
    flops = torch.cumsum(torch.rand(steps, generator=g) * 300 + 100, 0)  # millions
    thr = torch.rand(39, steps, generator=g).sort(dim=1, descending=True).values
    thr[:, -1] = -1e8
    thr[0, 0] = 1e8  # "nobody exits here"
    return {"model_name": name, "patch_size": patch_size, **sd, "flops": flops.tolist(),
            "model_flops": float(flops[0]), "policy_flops": 1.0, "fc_flops": 2.0,
            "anytime_classification": [60.0 + 3 * t for t in range(steps)],
            "dynamic_threshold": thr, "budgeted_batch_classification": [[float(x) for x in torch.linspace(
                float(flops[0]), float(flops[-1]), 39)], [70.0] * 39]}


# ---------------------------------------------------------------------- the inference path
def _bn(sd, key, x):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                        sd[f"{key}.bias"], training=False, eps=1e-5)


def _conv(sd, key, x, stride=1, groups=1):
    w = sd[f"{key}.weight"]
    return F.conv2d(x, w, sd.get(f"{key}.bias"), stride, w.shape[-1] // 2, 1, groups)


_ACT = {"relu": F.relu, "hswish": F.hardswish, "swish": F.silu, "sigmoid": torch.sigmoid,
        "hsigmoid": F.hardsigmoid}


def _regnet_forward(name, sd, x):
    x = F.relu(_bn(sd, "stem.bn", _conv(sd, "stem.conv", x, 2)))
    for i, (w, d, g) in enumerate(regnet_stages(name), start=1):
        for j in range(1, d + 1):
            b = f"s{i}.b{j}"
            stride = 2 if j == 1 else 1
            y = F.relu(_bn(sd, f"{b}.f.a_bn", _conv(sd, f"{b}.f.a", x)))
            y = F.relu(_bn(sd, f"{b}.f.b_bn", _conv(sd, f"{b}.f.b", y, stride, groups=w // g)))
            s = y.mean((2, 3), keepdim=True)
            s = torch.sigmoid(_conv(sd, f"{b}.f.se.f_ex.2", F.relu(_conv(sd, f"{b}.f.se.f_ex.0", s))))
            y = _bn(sd, f"{b}.f.c_bn", _conv(sd, f"{b}.f.c", y * s))
            short = _bn(sd, f"{b}.bn", _conv(sd, f"{b}.proj", x, stride)) if j == 1 else x
            x = F.relu(short + y)
    return x.mean((2, 3)), x


def _gen_forward(name, sd, x):
    stem, stages, _head = gen_blocks(name)
    mobilenet = ARCHS[name]["layout"] == "mobilenetv3"
    x = (F.hardswish if mobilenet else F.silu)(_bn(sd, "bn1", _conv(sd, "conv_stem", x, 2)))  # the model's activation
    for s, blocks in enumerate(stages):
        for i, b in enumerate(blocks):
            p = f"blocks.{s}.{i}"
            act = _ACT[b["act"]]
            if b["kind"] == "cn":
                x = act(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv", x)))
                continue
            y = x
            if b["kind"] == "ir":
                y = act(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv_pw", y)))
            y = _conv(sd, f"{p}.conv_dw", y, b["stride"], groups=b["mid"])
            y = act(_bn(sd, f"{p}.bn1" if b["kind"] == "ds" else f"{p}.bn2", y))
            if b["se"]:
                z = y.mean((2, 3), keepdim=True)
                z = _ACT[b["se_act"]](_conv(sd, f"{p}.se.conv_reduce", z))
                y = y * _ACT[b["gate"]](_conv(sd, f"{p}.se.conv_expand", z))
            last = "conv_pw" if b["kind"] == "ds" else "conv_pwl"
            y = _bn(sd, f"{p}.bn2" if b["kind"] == "ds" else f"{p}.bn3", _conv(sd, f"{p}.{last}", y))
            x = x + y if (b["stride"] == 1 and b["cin"] == b["out"]) else y
    if mobilenet:  # the 'efficient head': pool, then a 1x1 conv (with bias) and hard-swish
        feat = F.hardswish(_conv(sd, "conv_head", x.mean((2, 3), keepdim=True))).flatten(1)
        return feat, x
    x = F.silu(_bn(sd, "bn2", _conv(sd, "conv_head", x)))
    return x.mean((2, 3)), x


class OfficialEncoder:
    """An official encoder from its state dict: __call__(x) -> (pooled features, feature map)
    and head(features) -> the backbone's own logits."""

    def __init__(self, name: str, sd: dict[str, torch.Tensor]):
        import torchvision

        self.name, self.layout = name, ARCHS[name]["layout"]
        self.sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        if self.layout in ("resnet", "densenet"):
            self.net = torchvision.models.get_model(name).eval()
            self.net.load_state_dict(self.sd)

    def __call__(self, x):
        if self.layout == "resnet":
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
            return x.mean((2, 3)), x
        if self.layout == "densenet":
            x = F.relu(self.net.features(x))
            return x.mean((2, 3)), x
        if self.layout == "regnet":
            return _regnet_forward(self.name, self.sd, x)
        return _gen_forward(self.name, self.sd, x)

    def head(self, feat):
        key = {"resnet": "fc", "regnet": "fc"}.get(self.layout, "classifier")
        return F.linear(feat, self.sd[f"{key}.weight"], self.sd[f"{key}.bias"])


def _gru(x, h, sd, prefix):
    """One step of a single-layer torch GRU (gates r, z, n) from its _l0 parameters."""
    gi = F.linear(x, sd[f"{prefix}weight_ih_l0"], sd[f"{prefix}bias_ih_l0"])
    gh = F.linear(h, sd[f"{prefix}weight_hh_l0"], sd[f"{prefix}bias_hh_l0"])
    ir, iz, in_ = gi.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (1 - z) * n + z * h


@torch.no_grad()
def official_inference(name: str, parts: dict[str, dict], images: torch.Tensor, patch_size: int,
                       steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-step logits and the focus patches' top-left corners (row, col) of the release's
    inference path, for normalised float images (B, 3, H, H)."""
    a = ARCHS[name]
    prime = OfficialEncoder(name, parts["model_prime_state_dict"])
    local = OfficialEncoder(name, parts["model_state_dict"])
    fc, pol = parts["fc"], parts["policy"]
    B, H = images.shape[0], images.shape[2]
    # F.interpolate in float64: the release's float32 call misplaces its sample points by up to
    # ~1e-4 px (its scale factor is rounded), noise of that call rather than part of the model
    glance = F.interpolate(images.double(), size=[patch_size, patch_size], mode=a["glance"],
                           align_corners=True).to(images.dtype)
    feat, fmap = prime(glance)
    logits, corners = [], []
    if a["gru"]:
        h = _gru(feat, feat.new_zeros(B, 1024), fc, "rnn.")
        out = prime.head(feat) if a["layout"] == "regnet" else F.linear(h, fc["fc.weight"], fc["fc.bias"])
    else:
        cat = feat
        out = prime.head(feat)
    logits.append(out)
    ph = feat.new_zeros(B, a["hidden"])
    for _t in range(1, steps):
        if a["mlp"]:
            z = F.relu(F.linear(fmap.flatten(1), pol["state_encoder.0.weight"], pol["state_encoder.0.bias"]))
            z = F.relu(F.linear(z, pol["state_encoder.2.weight"], pol["state_encoder.2.bias"]))
        else:
            z = F.relu(F.conv2d(fmap, pol["state_encoder.0.weight"])).flatten(1)
            z = F.relu(F.linear(z, pol["state_encoder.3.weight"], pol["state_encoder.3.bias"]))
        ph = _gru(z, ph, pol, "gru.")
        action = torch.sigmoid(F.linear(ph, pol["actor.0.weight"], pol["actor.0.bias"]))
        corner = torch.floor(action * (H - patch_size)).int()  # float32, as the release
        corners.append(corner)
        patches = torch.stack([images[b, :, int(corner[b, 0]):int(corner[b, 0]) + patch_size,
                                      int(corner[b, 1]):int(corner[b, 1]) + patch_size] for b in range(B)])
        feat, fmap = local(patches)
        if a["gru"]:
            h = _gru(feat, h, fc, "rnn.")
            out = F.linear(h, fc["fc.weight"], fc["fc.bias"])
        else:
            cat = torch.cat([cat, feat], 1)
            k = cat.shape[1] // feat.shape[1]
            out = F.linear(cat, fc[f"fc_{k}.weight"], fc[f"fc_{k}.bias"])
        logits.append(out)
    return logits, corners


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """ToTensor + Normalize, as the release's loaders."""
    x = images_uint8.float() / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
