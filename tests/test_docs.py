"""The README and docs/: every relative link leads to a file that is there, and every #anchor to a heading
of it (GitHub's rule: lower case, punctuation but '-' dropped, spaces to '-', repeats numbered)."""
import glob
import os
import re

from conftest import ROOT

FENCE = re.compile(r"```.*?```", re.S)


def anchors(path: str) -> set:
    seen, out = {}, set()
    for line in FENCE.sub("", open(path, encoding="utf-8").read()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(files: list) -> list:
    bad = []
    for f in files:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", open(f, encoding="utf-8").read())):
            if re.match(r"[a-z]+:", target):                # http(s), mailto: not checked here
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            if not os.path.exists(dest) or (anchor and dest.endswith(".md") and anchor not in anchors(dest)):
                bad.append(f"{os.path.relpath(f, ROOT)}: {target}")
    return bad


def test_every_link_of_the_docs_leads_somewhere():
    files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    assert len(files) > 1 and broken_links(files) == []


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Title: `--x` here\n\n[ok](#title---x-here) [gone](#nowhere) [file](b.md)\n"
                    "```\n[in a fence](#ignored)\n```\n")
    name = os.path.relpath(str(page), ROOT)
    assert broken_links([str(page)]) == [f"{name}: #nowhere", f"{name}: b.md"]
