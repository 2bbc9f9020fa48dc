"""What a run's environment holds, said one way wherever it is said: the
worker's build line ("Building environment … (pip: 5 packages, requirements
file (3 lines))") and `cast info`'s Pip row ("requirements file req.txt (3 lines)").
"""

from __future__ import annotations


def requirement_lines(pip_req: str | None) -> int:
    """The lines of a requirements file that ask for something (not blank, not comments)."""
    return sum(1 for line in (pip_req or "").splitlines() if line.strip() and not line.lstrip().startswith("#"))


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def requirements_text(pip_req: str, name: str | None = None) -> str:
    named = f" {name}" if name else ""
    return f"requirements file{named} ({_count(requirement_lines(pip_req), 'line')})"


def pip_text(pip: list[str], pip_req: str | None, pip_req_name: str | None = None) -> str:
    """The pip packages by name and the requirements file, if any:
    "numpy + requirements file requirements.txt (2 lines)"."""
    parts = [" ".join(pip)] if pip else []
    if pip_req:
        parts.append(requirements_text(pip_req, pip_req_name))
    return " + ".join(parts)


def build_summary(*, pip: list[str], pip_req: str | None, apt: list[str] = (), base_image: str | None = None,
                  installer_note: str | None = None) -> str:
    """What a build is about to install, by count, and with what when it installs pip packages:
    "apt: 1 package; pip: 5 packages, requirements file (3 lines), with uv"."""
    parts = []
    if base_image:
        parts.append(f"base image {base_image}")
    if apt:
        parts.append(f"apt: {_count(len(apt), 'package')}")
    if pip or pip_req:
        asked = [_count(len(pip), "package")] if pip else []
        if pip_req:
            asked.append(requirements_text(pip_req))
        if installer_note:
            asked.append(installer_note)
        parts.append("pip: " + ", ".join(asked))
    return "; ".join(parts)
