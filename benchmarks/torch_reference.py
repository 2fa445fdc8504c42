r"""OUR re-implementation, in eager PyTorch, of the reference TRM-MLP train step, for timing only.

    python benchmarks/torch_reference.py --batch=32 --dtype=bfloat16 --steps=3

This is NOT the published reference code (which is not part of this
project); it is a faithful eager-mode transcription of what
../shared/REFERENCE.md says the reference computes for the Sudoku TRM-MLP
config (hidden 512, 2 layers, H_cycles 3, L_cycles 6, MLP-mixer over the
97-position sequence, puzzle-embedding prefix 16, vocabulary 11), written the
way the reference writes it: float32 parameters cast to the activation dtype
at use (`F.linear(x, w.to(x.dtype))`), explicit bfloat16 activations (no
autocast), RMSNorm in float32, the no-grad cycles under `torch.no_grad()`,
stablemax cross-entropy in float64, the q-halt BCE, `backward()` on
`loss / batch`, AdamATan2 (foreach ops) on the core parameters and sign-SGD
on the puzzle-embedding rows used. One call = one supervision step on a
reset carry (as `trm_jax.bench` times). Prints one JSON line.

Needs `pip install torch` (not a dependency of trm_jax).
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F


def trunc_normal_(t, std):
  # Truncated normal on [-2, 2] sigma, std corrected for truncation (as the reference).
  torch.nn.init.trunc_normal_(t, std=1.0, a=-2.0, b=2.0)
  t.mul_(std / 0.87962566103423978)
  return t


def swiglu_inter(width, expansion=4.0):
  inter = round(expansion * width * 2 / 3)
  return -(inter // -256) * 256


class CastedLinear(torch.nn.Module):
  def __init__(self, n_in, n_out, bias=False, zero=False):
    super().__init__()
    self.weight = torch.nn.Parameter(
      torch.zeros(n_out, n_in) if zero else trunc_normal_(torch.empty(n_out, n_in), 1 / math.sqrt(n_in))
    )
    self.bias = torch.nn.Parameter(torch.zeros(n_out)) if bias else None

  def forward(self, x):
    b = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, self.weight.to(x.dtype), b)


def rms_norm(x, eps=1e-5):
  dt = x.dtype
  x = x.to(torch.float32)
  return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)).to(dt)


class SwiGLU(torch.nn.Module):
  def __init__(self, width, expansion=4.0):
    super().__init__()
    inter = swiglu_inter(width, expansion)
    self.gate_up_proj = CastedLinear(width, 2 * inter)
    self.down_proj = CastedLinear(inter, width)

  def forward(self, x):
    gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    return self.down_proj(F.silu(gate) * up)


class MixerBlock(torch.nn.Module):
  def __init__(self, d, t):
    super().__init__()
    self.mlp_t = SwiGLU(t)
    self.mlp = SwiGLU(d)

  def forward(self, h):
    h = h.transpose(1, 2)
    h = rms_norm(h + self.mlp_t(h))
    h = h.transpose(1, 2)
    return rms_norm(h + self.mlp(h))


class ReasoningNet(torch.nn.Module):
  def __init__(self, d, t, layers):
    super().__init__()
    self.layers = torch.nn.ModuleList([MixerBlock(d, t) for _ in range(layers)])

  def forward(self, z, injection):
    h = z + injection
    for layer in self.layers:
      h = layer(h)
    return h


class TRM(torch.nn.Module):
  def __init__(self, d=512, seq=81, vocab=11, P=16, ndim=512, layers=2, H=3, L=6, n_ids=1, dtype=torch.bfloat16):
    super().__init__()
    self.d, self.P, self.ndim, self.H, self.L, self.dtype = d, P, ndim, H, L, dtype
    self.embed_tokens = torch.nn.Parameter(trunc_normal_(torch.empty(vocab, d), 1 / math.sqrt(d)))
    self.puzzle_emb = torch.zeros(n_ids, ndim)  # the sparse table: not an nn.Parameter
    self.L_level = ReasoningNet(d, seq + P, layers)
    self.lm_head = CastedLinear(d, vocab)
    self.q_head = CastedLinear(d, 2, bias=True, zero=True)
    with torch.no_grad():
      self.q_head.bias.fill_(-5.0)
    self.register_buffer("H_init", trunc_normal_(torch.empty(d), 1.0))
    self.register_buffer("L_init", trunc_normal_(torch.empty(d), 1.0))

  def embed(self, inputs, rows):
    x = F.embedding(inputs, self.embed_tokens.to(self.dtype))
    rows = F.pad(rows, (0, self.P * self.d - rows.shape[-1])).view(-1, self.P, self.d)
    x = torch.cat([rows.to(self.dtype), x], dim=1)
    return math.sqrt(self.d) * x

  def forward(self, z_H, z_L, inputs, rows):
    x = self.embed(inputs, rows)
    with torch.no_grad():
      for _ in range(self.H - 1):
        for _ in range(self.L):
          z_L = self.L_level(z_L, z_H + x)
        z_H = self.L_level(z_H, z_L)
    for _ in range(self.L):
      z_L = self.L_level(z_L, z_H + x)
    z_H = self.L_level(z_H, z_L)
    logits = self.lm_head(z_H)[:, self.P :]
    q = self.q_head(z_H[:, 0]).to(torch.float32)
    return z_H.detach(), z_L.detach(), logits, q


def log_stablemax(x, eps=1e-30):
  # The reference's epsilon keeps the untaken branch finite (x == 1 exactly is common in bfloat16).
  s = torch.where(x < 0, 1 / (1 - x + eps), x + 1)
  return torch.log(s / s.sum(-1, keepdim=True))


def act_loss(logits, labels, q_halt):
  mask = labels != -100
  n = mask.sum(-1).clamp_min(1)
  logp = log_stablemax(logits.to(torch.float64))
  ce = -torch.gather(logp, -1, torch.where(mask, labels, 0).unsqueeze(-1)).squeeze(-1)
  ce = torch.where(mask, ce, 0)
  lm_loss = (ce.sum(-1) / n).sum()
  correct = ((logits.argmax(-1) == labels) | ~mask).all(-1)
  q_loss = F.binary_cross_entropy_with_logits(q_halt, correct.to(q_halt.dtype), reduction="sum")
  return lm_loss + 0.5 * q_loss


class AdamATan2:
  """Decoupled weight decay + atan2 Adam update, no epsilon (REFERENCE.md section 6), foreach ops."""

  def __init__(self, params, lr=1e-4, b1=0.9, b2=0.95, wd=1.0):
    self.p = list(params)
    self.m = [torch.zeros_like(p) for p in self.p]
    self.v = [torch.zeros_like(p) for p in self.p]
    self.lr, self.b1, self.b2, self.wd, self.t = lr, b1, b2, wd, 0

  @torch.no_grad()
  def step(self):
    self.t += 1
    g = [p.grad for p in self.p]
    torch._foreach_mul_(self.p, 1 - self.lr * self.wd)
    torch._foreach_lerp_(self.m, g, 1 - self.b1)
    torch._foreach_mul_(self.v, self.b2)
    torch._foreach_addcmul_(self.v, g, g, 1 - self.b2)
    denom = torch._foreach_sqrt(self.v)
    torch._foreach_div_(denom, math.sqrt(1 - self.b2**self.t))
    upd = [torch.atan2(m, d) for m, d in zip(self.m, denom)]
    torch._foreach_add_(self.p, upd, alpha=-self.lr / (1 - self.b1**self.t))
    for p in self.p:
      p.grad = None


def make_step(model, opt, batch, lr=1e-4, wd=1.0):
  b, t, d = batch["inputs"].shape[0], model.P + batch["inputs"].shape[1], model.d

  def step():
    # Every row restarts (halted carry) with the fresh batch, as trm_jax.bench's first call does.
    z_H = model.H_init.to(model.dtype).expand(b, t, d)
    z_L = model.L_init.to(model.dtype).expand(b, t, d)
    ids = batch["puzzle_identifiers"]
    rows = model.puzzle_emb[ids].clone().requires_grad_(True)
    _, _, logits, q = model(z_H, z_L, batch["inputs"], rows)
    loss = act_loss(logits, batch["labels"], q[:, 0])
    (loss / b).backward()
    opt.step()
    with torch.no_grad():  # sign-SGD on the rows used, gradients of equal ids summed
      uniq, inv = ids.unique(return_inverse=True)
      gsum = torch.zeros(len(uniq), rows.shape[1]).index_add_(0, inv, rows.grad)
      model.puzzle_emb[uniq] = model.puzzle_emb[uniq] * (1 - lr * wd) - lr * gsum.sign()
    return loss.detach()

  return step


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
  ap.add_argument("--label", default="")
  a = ap.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  dtype = getattr(torch, a.dtype)
  model = TRM(dtype=dtype)
  opt = AdamATan2([p for p in model.parameters()])
  g = torch.Generator().manual_seed(0)
  batch = {
    "inputs": torch.randint(1, 11, (a.batch, 81), generator=g),
    "labels": torch.randint(1, 11, (a.batch, 81), generator=g),
    "puzzle_identifiers": torch.zeros(a.batch, dtype=torch.long),
  }
  step = make_step(model, opt, batch)
  times, cpu = [], []
  for i in range(a.warmup + a.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    if i >= a.warmup:
      times.append(dt)
      cpu.append(dc)
  print(
    json.dumps(
      {
        "impl": "torch-eager (our re-implementation of the reference)",
        "label": a.label,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "dtype": a.dtype,
        "step_ms_median": round(1e3 * statistics.median(times), 1),
        "step_ms_min": round(1e3 * min(times), 1),
        "cpu_s_per_step": round(statistics.median(cpu), 2),
        "loss": float(loss),
        "loadavg": os.getloadavg()[0],
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  main()
