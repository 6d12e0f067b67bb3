"""LoRA (chapter 09): fine-tune a frozen model through a low-rank change of some of its matrices.

A Linear layer computes y = x W^T. LoRA keeps W frozen and learns the change as a product of two thin
matrices, B (out, r) times A (r, in), with a rank r far below both sides:

    y = x W^T + (alpha / r) * dropout(x) A^T B^T

B starts at zero, so at step 0 the model is exactly the pretrained one; A starts random (as a Linear),
so B's gradient is not zero and learning can start. The optimizer holds state for A and B only: for
SmolLM2 at r = 8 on q_proj and v_proj that is 0.46M numbers instead of 135M.

Adapters are saved in the format of Hugging Face's `peft` (adapter_model.safetensors and
adapter_config.json), so `peft.PeftModel.from_pretrained` loads them onto a LlamaForCausalLM: the
course model's module names are the checkpoint's, and peft names a LoRA weight
`base_model.model.<module path>.lora_A.weight`.
"""

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """A frozen nn.Linear (`base_layer`) plus a trainable low-rank update, peft's layer names."""

    def __init__(self, base_layer: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"the LoRA rank r must be at least 1, got {r}")
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r            # alpha / r: changing r does not change the update's size at init
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False)     # A: (r, in), random like any Linear
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False)    # B: (out, r), zero: no change at start
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A.to(base_layer.weight.device, base_layer.weight.dtype)
        self.lora_B.to(base_layer.weight.device, base_layer.weight.dtype)
        self.merged = False
        self.disabled = False               # True: the base layer alone (adapters_disabled, chapter 10's reference)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * self.lora_B.weight @ self.lora_A.weight                   # (out, in)

    def forward(self, x):
        y = self.base_layer(x)                                                           # (B, T, out)
        if self.merged and self.disabled:
            raise RuntimeError("a merged LoRA layer cannot be switched off: unmerge() it first")
        if self.merged or self.disabled:   # merged: W already holds W + scale * B A
            return y
        return y + self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x)))       # (B, T, out)

    @torch.no_grad()
    def merge(self):
        """Fold the update into W: inference then costs what the base model costs."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def apply_lora(model: nn.Module, targets=("q_proj", "v_proj"), r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> nn.Module:
    """Freeze every parameter of `model`, then wrap each nn.Linear whose name ends with one of `targets`
    in a LoRALinear (in place). The A and B matrices are the only trainable parameters left."""
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in targets:
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named one of {tuple(targets)} in the model: LoRA would train nothing; "
                         "give module names such as 'q_proj', 'v_proj' (see model.named_modules())")
    model.lora_config = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(set(
        n.rsplit(".", 1)[-1] for n in wrapped))}
    return model


def lora_layers(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Inside this block the model is its base model: every LoRA layer returns base_layer(x) alone. With
    B initialised to zero and A, B the only trainable tensors, this IS the frozen model the adapters started
    from, so preference tuning needs no second copy of the weights for its reference (peft: disable_adapter)."""
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("the model has no LoRA layers to switch off: call apply_lora first (a model without "
                         "adapters needs a separate frozen copy as its reference)")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer.disabled = was


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied matrix counts once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter and put plain nn.Linear layers back (peft's merge_and_unload): the result has
    the base model's module names, so Llama.to_hf exports it."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def lora_state_dict(model: nn.Module) -> dict:
    """The adapter's weights under peft's names: base_model.model.<module>.lora_A.weight / lora_B.weight."""
    state = {}
    for name, layer in lora_layers(model).items():
        if layer.merged:
            raise ValueError(f"{name} is merged: unmerge() before saving the adapter, or it would be saved twice")
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous()
    return state


def save_adapter(model: nn.Module, folder, base_model_name_or_path: str | None = None) -> Path:
    """Write adapter_model.safetensors and adapter_config.json, as peft's save_pretrained does."""
    from safetensors.torch import save_file

    if not lora_layers(model):
        raise ValueError("the model has no LoRA layers to save: call apply_lora first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(model), folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", **model.lora_config, "bias": "none",
              "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
              "base_model_name_or_path": base_model_name_or_path, "modules_to_save": None,
              "use_rslora": False, "use_dora": False}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def load_adapter(model: nn.Module, folder) -> nn.Module:
    """Wrap `model` as adapter_config.json says and load the adapter's weights (a peft adapter works too,
    if it is a plain LoRA on nn.Linear layers)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    files = [folder / "adapter_config.json", folder / "adapter_model.safetensors"]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a LoRA adapter: missing {', '.join(missing)}")
    config = json.loads(files[0].read_text())
    unsupported = {k: config.get(k) for k in ("use_dora", "use_rslora", "fan_in_fan_out") if config.get(k)}
    if config.get("peft_type") != "LORA" or unsupported or config.get("bias", "none") != "none":
        raise ValueError(f"{folder} holds a {config.get('peft_type')} adapter with {unsupported or config.get('bias')}:"
                         " only plain LoRA (no DoRA, rsLoRA, bias or fan_in_fan_out) loads here")
    try:
        state = load_file(files[1])
    except (SafetensorError, OSError) as err:
        raise ValueError(f"the adapter in {folder} is corrupt ({err}): save it again") from err
    apply_lora(model, config["target_modules"], config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0))
    expected = lora_state_dict(model)
    if set(state) != set(expected):
        extra, absent = sorted(set(state) - set(expected))[:3], sorted(set(expected) - set(state))[:3]
        raise ValueError(f"the adapter in {folder} does not fit this model: unexpected {extra}, missing {absent}")
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            tensor = state[f"{PEFT_PREFIX}{name}.{part}.weight"]
            weight = getattr(layer, part).weight
            if tensor.shape != weight.shape:
                raise ValueError(f"the adapter in {folder} does not fit this model: {name}.{part} is "
                                 f"{tuple(tensor.shape)} in the adapter, {tuple(weight.shape)} in the model")
            with torch.no_grad():
                weight.copy_(tensor)
    return model
