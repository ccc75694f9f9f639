#!/usr/bin/env python3
"""The burn-moe layer written the two ways a PyTorch user would, timed on the CPU.

Same layer as benches/moe_layer.rs: router Linear(d, m, no bias) -> softmax -> top-k, gates =
the chosen scores (not renormalised), SwiGLU experts d -> 2d -> d without biases, output =
sum over the token's admitted experts of gate * expert(x). Capacity mode (`cap`) keeps at most
ceil(1.25 * k * tokens / m) assignments per expert, admitted rank by rank and in token order
within a rank (GShard's order, as burn-moe does); `dropless` keeps them all.

  param-loop    : one Parameter per expert and matrix (Hugging Face Mixtral's ModuleList
                  experts) and its loop over the experts that got tokens
                  (one_hot -> where -> gather -> expert -> index_add_).
  grouped-mm    : stacked weights, assignments sorted by expert, torch.nn.functional.grouped_mm
                  over the per-expert offsets for the up/gate and down projections (what
                  transformers' `grouped_mm` experts implementation calls).
  stacked-index : the loop of param-loop over ONE stacked Parameter indexed per expert (`w[e]`),
                  whose backward builds a full-size zero gradient per expert: slow in the backward
                  pass, kept only to compare with earlier tables (not a form to compare against).

Usage:
  python3 benches/pytorch_reference.py --threads 2 --shapes 256:16:2:8192:cap,256:16:2:8192:dropless
  python3 benches/pytorch_reference.py --check      # both forms agree with a plain loop

Prints one JSON object per (shape, pass, form) line: tokens/s from the median of --reps timed
iterations after --warmup, each ending with a scalar read (the output's sum, or the sum of the
expert weights' gradient), like the Rust side.
"""

import argparse
import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("PyTorch is not installed: pip install torch --index-url "
             "https://download.pytorch.org/whl/cpu   (see BENCHMARKS.md)")


class MoeLayer(torch.nn.Module):
    def __init__(self, d_model, experts, top_k, capacity_factor):
        super().__init__()
        d_ff = 2 * d_model
        self.m, self.k, self.cf = experts, top_k, capacity_factor
        self.router = torch.nn.Linear(d_model, experts, bias=False)
        bound_in, bound_out = 1 / math.sqrt(3 * d_model), 1 / math.sqrt(3 * d_ff)
        # Stacked expert weights [m, d, f] / [m, f, d], like burn-moe's ExpertFfn.
        self.w_in = torch.nn.Parameter(torch.empty(experts, d_model, d_ff).uniform_(-bound_in, bound_in))
        self.w_gate = torch.nn.Parameter(torch.empty(experts, d_model, d_ff).uniform_(-bound_in, bound_in))
        self.w_out = torch.nn.Parameter(torch.empty(experts, d_ff, d_model).uniform_(-bound_out, bound_out))
        # The same weights as one Parameter per expert and matrix (param-loop's form).
        per_expert = lambda w: torch.nn.ParameterList(torch.nn.Parameter(w[e].detach().clone()) for e in range(experts))
        self.p_in, self.p_gate, self.p_out = per_expert(self.w_in), per_expert(self.w_gate), per_expert(self.w_out)

    def expert(self, e, x):
        return (F.silu(x @ self.w_gate[e]) * (x @ self.w_in[e])) @ self.w_out[e]

    def expert_param(self, e, x):
        return (F.silu(x @ self.p_gate[e]) * (x @ self.p_in[e])) @ self.p_out[e]

    def grad_probe(self, form):
        """The down-projection gradient the timed step reads, in the form's own parameters."""
        if form == "param-loop":
            return self.p_out[0].grad
        return self.w_out.grad

    def route(self, x):
        """Scores, top-k (gates, experts) and the admitted mask [tokens, k]."""
        scores = F.softmax(self.router(x), dim=-1)
        gates, chosen = torch.topk(scores, self.k, dim=-1)
        if self.cf is None:
            return gates, chosen, torch.ones_like(chosen, dtype=torch.bool)
        n = x.shape[0]
        capacity = math.ceil(self.cf * self.k * n / self.m)
        # Queue position of each assignment in its expert: rank-major, then token order.
        order = chosen.t().reshape(-1)                                  # [k * n]
        one_hot = F.one_hot(order, self.m)                              # [k*n, m]
        position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
        admitted = (position < capacity).reshape(self.k, n).t()
        return gates, chosen, admitted

    def forward_param_loop(self, x):
        return self.loop(x, self.expert_param)

    def forward_stacked_index(self, x):
        return self.loop(x, self.expert)

    def loop(self, x, expert):
        gates, chosen, admitted = self.route(x)
        gates = gates * admitted
        out = torch.zeros_like(x)
        # [m, k, n] mask, as in the Mixtral block.
        mask = F.one_hot(chosen * admitted + self.m * (~admitted), self.m + 1)[..., : self.m].permute(2, 1, 0)
        for e in range(self.m):
            rank, token = torch.where(mask[e])
            if token.numel() == 0:
                continue
            y = expert(e, x[token]) * gates[token, rank, None]
            out.index_add_(0, token, y)
        return out

    def forward_grouped_mm(self, x):
        gates, chosen, admitted = self.route(x)
        flat_expert = chosen.reshape(-1)
        keep = admitted.reshape(-1).nonzero().squeeze(1)
        expert_of = flat_expert[keep]
        order = torch.argsort(expert_of, stable=True)
        assignment = keep[order]
        token = assignment // self.k
        offs = torch.cumsum(torch.bincount(expert_of, minlength=self.m), 0).to(torch.int32)
        xs = x[token]
        h = F.silu(F.grouped_mm(xs, self.w_gate, offs=offs)) * F.grouped_mm(xs, self.w_in, offs=offs)
        y = F.grouped_mm(h, self.w_out, offs=offs) * gates.reshape(-1)[assignment, None]
        return torch.zeros_like(x).index_add_(0, token, y)


def plain_loop(layer, x):
    """Token by token, assignment by assignment: the reference for --check."""
    gates, chosen, admitted = layer.route(x)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for r in range(layer.k):
            if admitted[t, r]:
                e = int(chosen[t, r])
                out[t] += gates[t, r] * layer.expert(e, x[t:t + 1])[0]
    return out


def parse_shape(s):
    d, m, k, n, mode = s.split(":")
    if mode not in ("cap", "dropless"):
        raise SystemExit(f"bad shape {s}: mode must be cap or dropless")
    return int(d), int(m), int(k), int(n), mode


def make_input(n, d):
    # splitmix64 of the element index, as in benches/moe_layer.rs: the same values on both sides.
    import numpy as np
    with np.errstate(over="ignore"):
        z = np.arange(n * d, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    x = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)
    return torch.from_numpy(x.reshape(n, d))


def time_it(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check():
    torch.manual_seed(0)
    for d, m, k, n, cf in [(16, 4, 2, 40, 1.0), (8, 8, 1, 33, None), (16, 6, 3, 50, 0.5)]:
        layer = MoeLayer(d, m, k, cf)
        x = torch.randn(n, d)
        with torch.no_grad():
            want = plain_loop(layer, x)
            for name in ("param_loop", "grouped_mm", "stacked_index"):
                got = getattr(layer, f"forward_{name}")(x)
                err = (got - want).abs().max().item()
                assert err < 1e-5, f"{name} differs from the plain loop by {err} ({d},{m},{k},{n},{cf})"
        # The gradients of the two timed forms agree too (input and down projection).
        grads = {}
        for form in ("param_loop", "grouped_mm"):
            layer.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_(True)
            (getattr(layer, f"forward_{form}")(xg) * torch.ones_like(x)).sum().backward()
            w = torch.stack([p.grad if p.grad is not None else torch.zeros_like(p) for p in layer.p_out]) \
                if form == "param_loop" else layer.w_out.grad
            grads[form] = (xg.grad, w)
        for a, b in zip(grads["param_loop"], grads["grouped_mm"]):
            err = (a - b).abs().max().item()
            assert err < 1e-5, f"param-loop and grouped-mm gradients differ by {err}"
    print("check: param-loop, grouped-mm and stacked-index agree with the plain loop, and the two timed forms' gradients agree")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256:16:2:2048:cap,256:16:2:2048:dropless,256:16:2:8192:cap,256:16:2:8192:dropless")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: PyTorch's)")
    p.add_argument("--passes", default="fwd,fwdbwd")
    p.add_argument("--forms", default="param-loop,grouped-mm")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    if args.check:
        check()
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    for s in args.shapes.split(","):
        d, m, k, n, mode = parse_shape(s)
        layer = MoeLayer(d, m, k, 1.25 if mode == "cap" else None)
        x = make_input(n, d)
        for pas in args.passes.split(","):
            for form in args.forms.split(","):
                fwd = getattr(layer, "forward_" + form.replace("-", "_"))
                if pas == "fwd":
                    def step():
                        with torch.no_grad():
                            return fwd(x).sum().item()
                else:
                    xg = x.clone().requires_grad_(True)
                    upstream = torch.ones_like(x)

                    def step():
                        layer.zero_grad(set_to_none=True)
                        # grouped_mm's CPU backward needs a dense upstream gradient, which
                        # sum() does not give: weight the output by a constant tensor instead.
                        (fwd(xg) * upstream).sum().backward()
                        return layer.grad_probe(form).sum().item()
                seconds = time_it(step, args.warmup, args.reps)
                print(json.dumps({
                    "shape": f"d{d}-e{m}-k{k}-t{n}-{mode}", "pass": pas, "form": form,
                    "threads": torch.get_num_threads(), "seconds": seconds,
                    "tokens_per_s": n / seconds, "torch": torch.__version__,
                }), flush=True)


if __name__ == "__main__":
    main()
