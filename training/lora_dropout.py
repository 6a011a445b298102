"""LoRA dropout fused into the `lora_A` projection, keeping a 1-byte mask instead of a dropped copy of the input.

peft computes `lora_B(lora_A(dropout(x)))` for every adapted projection. Autograd then keeps, per projection, the
dropped input `dropout(x)` for `lora_A`'s weight gradient and the dropout noise or mask for the input gradient
(on CPU two full-size fp32 copies of the layer input; on CUDA the dropped input and a bool mask), seven times per
decoder layer. `x` itself is kept anyway (by the
sibling projections and the layer's own backward). `DropoutLinear` saves `x`, a bool mask and the keep scale, and
rebuilds the dropped input in backward, so the values, the random stream and the gradients are exactly those of
`nn.Dropout` followed by `nn.Linear`, and only the saved tensors shrink. At the ~0.5B benchmark config (batch 1,
~310 tokens, r=128 on all seven projections, CPU) the saved tensors go from 1134 to 814 MB
(`python -m benchmarks.saved_activations`).
"""

import torch
from torch import nn
from torch.nn import functional as F


class _DropoutThenLinear(torch.autograd.Function):
    """`F.linear(F.dropout(x, p), weight)`, saving `(x, mask, scale)` rather than the dropped input and the noise.

    Backward uses the formulas autograd uses for that graph (`mul` then `linear` on a 2-D view, with autocast's casts
    to the matmul dtype and back), so the gradients are the same bits without recomputing the forward matmul.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        # Dropping out a tensor of ones yields the noise `F.dropout(x)` multiplies by: same random draws, same values.
        noise = F.dropout(torch.ones_like(x), p, training=True, inplace=True)
        ctx.save_for_backward(x, noise != 0, noise.amax(), weight)
        return F.linear(noise.mul_(x), weight)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, mask, scale, weight = ctx.saved_tensors
        noise = mask * scale
        # Under autocast the forward matmul ran in the output's dtype; the casts' backward casts the gradients back.
        matmul_dtype = grad_output.dtype
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            dropped = noise.mul(x).to(matmul_dtype).reshape(-1, x.shape[-1])
            grad_weight = grad_2d.t().mm(dropped).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = grad_2d.mm(weight.to(matmul_dtype)).view(x.shape).to(x.dtype).mul_(noise)
        return grad_x, grad_weight, None


class DropoutLinear(nn.Linear):
    """A bias-free `nn.Linear` (a LoRA `A` matrix) applied to `dropout(x)` in training mode.

    It shares the wrapped layer's weight, so state-dict keys, merging and saving are unchanged.

    Args:
        linear: the `lora_A` layer to take over (no bias).
        p: the dropout probability, in (0, 1).
    """

    def __init__(self, linear: nn.Linear, p: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.p = linear.in_features, linear.out_features, p
        self.weight, self.bias = linear.weight, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., in_features)` -> `(..., out_features)`."""
        if not self.training:
            return F.linear(x, self.weight)
        return _DropoutThenLinear.apply(x, self.weight, self.p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def fuse_lora_dropout(model: nn.Module) -> int:
    """Replaces `lora_dropout` + `lora_A` of every vanilla LoRA adapter in `model` by one `DropoutLinear`.

    Adapters with a variant (DoRA and others use the dropout output themselves), a biased `lora_A` or no dropout are
    left as peft built them.

    Returns:
        The number of adapters fused.
    """
    fused = 0
    for module in model.modules():
        lora_a, dropouts = getattr(module, "lora_A", None), getattr(module, "lora_dropout", None)
        if not isinstance(lora_a, nn.ModuleDict) or not isinstance(dropouts, nn.ModuleDict):
            continue
        for name in sorted(lora_a.keys() & dropouts.keys()):
            layer, dropout = lora_a[name], dropouts[name]
            if (
                type(dropout) is nn.Dropout
                and 0 < dropout.p < 1
                and type(layer) is nn.Linear
                and layer.bias is None
                and name not in getattr(module, "lora_variant", {})
            ):
                lora_a[name] = DropoutLinear(layer, dropout.p).train(layer.training)
                dropouts[name] = nn.Identity()
                fused += 1
    return fused
