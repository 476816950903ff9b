"""A derivation as text: LaTeX (one equation per step) or Markdown (steps with $$ blocks)."""

from __future__ import annotations

from symgrad.derive import derive
from symgrad.spec import OpSpec


def render_latex(spec: OpSpec, fmt: str = "latex") -> str:
    d = derive(spec)
    lines: list[str] = []
    if fmt == "markdown":
        lines.append(f"## {spec.name}: {spec.summary}\n")
        for n, step in enumerate(d.steps, 1):
            lines += [f"{n}. **{step.title}**", "", f"$$ {step.latex} $$", ""]
        if d.proofs:
            lines.append("**Proofs**\n")
            lines += [f"- ${p.claim}$: {p.method}" for p in d.proofs]
        return "\n".join(lines)
    lines.append(f"% {spec.name}: {spec.summary}")
    for p in d.proofs:  # before the steps, so the output ends with the form the kernel uses
        lines.append(f"% proven ({p.method}): {p.claim}")
    lines.append(r"\begin{align*}")
    for n, step in enumerate(d.steps, 1):
        end = r" \\" if n < len(d.steps) else ""
        lines.append(rf"  &\text{{{n}. {step.title}:}} && {step.latex}{end}")
    lines.append(r"\end{align*}")
    return "\n".join(lines)
