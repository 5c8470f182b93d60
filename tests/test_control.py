"""The control seam ready for trained adapters: module controllers, one dispatch, scales in training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scalestyle.attention import AttendFn, AttnSite, BatchLayout
from scalestyle.models.random_text import RandomTextEncoder
from scalestyle.schedules import get_schedule
from tests.helpers import tiny_transformer

SCHEDULE = get_schedule(1.0, "0.06M")


class ScaleGate(nn.Module):
    """A trainable adapter: scales each self-attention output by a learned per-scale factor and records
    the sites it saw."""

    def __init__(self, num_scales: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(num_scales))
        self.seen: list[AttnSite] = []

    def forward(
        self,
        site: AttnSite,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None,
        attend: AttendFn,
    ) -> torch.Tensor:
        self.seen.append(site)
        o = attend(q, k, v, bias)
        if site.kind != "self":
            return o
        scales = site.query_scales_L if site.scale is None else torch.full((q.shape[2],), site.scale)
        assert scales is not None
        return o * self.gate[scales.to(o.device)][None, None, :, None].to(o.dtype)


def test_module_controller_is_registered_while_installed_and_follows_casts() -> None:
    model = tiny_transformer()
    keys = set(model.state_dict())
    gate = ScaleGate(SCHEDULE.num_scales)
    with model.control.install(gate):
        assert set(model.state_dict()) - keys == {"controller.gate"}
        model.to(torch.float64)
        assert gate.gate.dtype == torch.float64
        model.to(torch.float32)
    assert set(model.state_dict()) == keys and model.control.controller is None


def test_teacher_forced_forward_tells_the_adapter_each_query_scale_and_trains_it() -> None:
    model = tiny_transformer()
    text = model.condition([RandomTextEncoder(128, 32).encode(["a star"])])
    inputs = torch.randn(1, SCHEDULE.total_tokens - 1, model.cfg.bits)
    gate = ScaleGate(SCHEDULE.num_scales)
    with model.control.install(gate):
        logits = model(inputs, text, SCHEDULE)
        logits.square().mean().backward()
    self_sites = [s for s in gate.seen if s.kind == "self"]
    assert len(self_sites) == model.cfg.depth and all(s.scale is None for s in self_sites)
    level = self_sites[0].query_scales_L
    assert level is not None and level.tolist() == [
        si for si, n in enumerate(SCHEDULE.tokens_per_scale) for _ in range(n)
    ]
    assert gate.gate.grad is not None and bool((gate.gate.grad != 0).all())


def test_identity_module_controller_equals_no_controller() -> None:
    model = tiny_transformer()
    text = model.condition([RandomTextEncoder(128, 32).encode(["a star", "a cat"])])
    inputs = torch.randn(2, SCHEDULE.total_tokens - 1, model.cfg.bits)
    with torch.no_grad():
        plain = model(inputs, text, SCHEDULE)
        with model.control.install(ScaleGate(SCHEDULE.num_scales)):
            gated = model(inputs, text, SCHEDULE)
    assert torch.equal(plain, gated)


def test_a_site_names_its_scale_or_every_query_scale() -> None:
    with pytest.raises(ValueError, match="either its scale"):
        AttnSite(0, None, "self", BatchLayout())
    with pytest.raises(ValueError, match="either its scale"):
        AttnSite(0, 1, "self", BatchLayout(), torch.zeros(3, dtype=torch.long))
