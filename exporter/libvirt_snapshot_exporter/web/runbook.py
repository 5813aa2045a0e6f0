"""The runbook (/runbook): RUNBOOK.md, shipped in the package, as HTML. Alerts link each
alert's section here (`/runbook#<alert name in lower case>`, the ids GitHub gives the same
headings), so the link works offline, on any install, at the version that raised the alert.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import markdown

from .. import __version__

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Runbook - libvirt snapshot exporter</title>
<style>
body {{ font-family: sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem;
       line-height: 1.45; }}
code, pre {{ background: #f4f4f4; }} pre {{ padding: .5rem; overflow-x: auto; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .2rem .4rem; }}
:target {{ background: #fff3c4; }}
</style></head>
<body><p><a href="./">libvirt snapshot exporter</a> {version} &middot; runbook</p>
{body}
</body></html>
"""
# A link to a file of the repository ([docs/verdict.md](docs/verdict.md)): the exporter serves
# none of them, so the page names the file instead of linking nowhere.
REPOSITORY_LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|#)([^)\s]+)\)")


@functools.cache
def render() -> bytes:
    """The page, rendered once: the runbook does not change while the exporter runs."""
    text = resources.files(__package__).joinpath("RUNBOOK.md").read_text(encoding="utf-8")
    text = REPOSITORY_LINK.sub(lambda m: m[1] if m[1] == m[2].split("#")[0] else
                               f"{m[1]} (`{m[2].split('#')[0]}` in the repository)", text)
    body = markdown.markdown(text, extensions=["toc", "tables", "fenced_code"])
    return PAGE.format(version=__version__, body=body).encode()
