"""The report as a list of blocks (headings, paragraphs, tables, figures, collapsed sections), rendered to Markdown
and to one self-contained HTML page, tables also to LaTeX.

pandas lays out the tables (`to_markdown` through tabulate, `Styler.to_latex`, `Styler.to_html` through jinja2);
this module adds what it has no notion of: cells with footnote marks, the footnotes under a table, the table's
title and caption, figures inlined as data URIs and sections folded in HTML.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
         "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↓": r"$\downarrow$",
         "↑": r"$\uparrow$", "→": r"$\to$", "×": r"$\times$", "–": "--", "≤": r"$\leq$", "…": r"\dots{}",
         "\n": "; "}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and the symbols the tables use); `code` spans become \\texttt."""
    parts = ["".join(LATEX.get(ch, ch) for ch in part) for part in text.split("`")]
    return "".join(rf"\texttt{{{p}}}" if i % 2 else p for i, p in enumerate(parts))


def inline_html(text: str) -> str:
    """Escape, then `code` spans and line breaks."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text)).replace("\n", "<br>")


@dataclass(frozen=True)
class Cell:
    text: str
    notes: tuple[int, ...] = ()  # footnote numbers

    def markdown(self) -> str:
        return self.text.replace("|", r"\|").replace("\n", "<br>") + "".join(f" [{k}]" for k in self.notes)

    def latex(self) -> str:
        return latex_escape(self.text) + "".join(rf"\textsuperscript{{{k}}}" for k in self.notes)

    def html(self) -> str:
        return inline_html(self.text) + "".join(f"<sup>{k}</sup>" for k in self.notes)


@dataclass
class Notes:
    """Footnotes of one table, numbered from 1 in order of first use; the same text gets the same number."""
    texts: list[str] = field(default_factory=list)

    def ref(self, text: str) -> tuple[int, ...]:
        if text not in self.texts:
            self.texts.append(text)
        return (self.texts.index(text) + 1,)


@dataclass
class Table:
    name: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def frame(self, render: Callable[[Cell], str]) -> pd.DataFrame:
        """The cells rendered for one output format, the header as the columns."""
        return pd.DataFrame([[render(c) for c in row] for row in self.rows],
                            columns=[render(Cell(h)) for h in self.header])

    def markdown(self, out_dir: Path) -> str:
        # numbers stay as formatted: tabulate would otherwise re-parse "0.0400" as 0.04
        table = self.frame(Cell.markdown).to_markdown(index=False, tablefmt="github", disable_numparse=True)
        notes = [f"- [{i}] {n}" for i, n in enumerate(self.notes, 1)]
        return "\n".join([f"### {self.title}", "", self.caption, "", table, "", *notes]).rstrip() + "\n"

    def latex(self) -> str:
        """A booktabs table float; footnotes as superscript numbers under it."""
        tabular = self.frame(Cell.latex).style.hide(axis="index").to_latex(
            column_format="l" + "r" * (len(self.header) - 1), hrules=True)
        notes = [r"\par\smallskip\footnotesize",
                 *(rf"\textsuperscript{{{i}}} {latex_escape(n)}\\" for i, n in enumerate(self.notes, 1))]
        return "\n".join([r"\begin{table}[ht]", r"\centering",
                          rf"\caption{{{latex_escape(self.title + '. ' + self.caption)}}}",
                          rf"\label{{tab:{self.name.replace('_', '-')}}}", tabular.rstrip("\n"),
                          *(notes if self.notes else []), r"\end{table}"]) + "\n"

    def html(self, out_dir: Path) -> str:
        """The table and its footnotes under one id (the anchor of the table in the page)."""
        caption = f"<b>{html.escape(self.title)}.</b> {inline_html(self.caption)}"
        table = self.frame(Cell.html).style.hide(axis="index").set_caption(caption).to_html(exclude_styles=True)
        notes = "".join(f"<li>{inline_html(n)}</li>" for n in self.notes)
        return f'<div id="{self.name}">{table}' + (f'<ol class="notes">{notes}</ol>' if notes else "") + "</div>"


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2

    def markdown(self, out_dir: Path) -> str:
        return f"{'#' * self.level} {self.text}\n"

    def html(self, out_dir: Path) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str

    def markdown(self, out_dir: Path) -> str:
        return self.text + "\n"

    def html(self, out_dir: Path) -> str:
        return f"<p>{inline_html(self.text)}</p>"


@dataclass(frozen=True)
class Figure:
    """A PNG under the report folder: linked from Markdown, inlined as a data URI in HTML (no file beside it)."""
    path: Path
    caption: str

    def markdown(self, out_dir: Path) -> str:
        return f"![{self.caption}]({self.path.relative_to(out_dir).as_posix()})\n\n*{self.caption}*\n"

    def html(self, out_dir: Path) -> str:
        data = base64.b64encode(self.path.read_bytes()).decode()
        return (f'<figure><img alt="{html.escape(self.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{inline_html(self.caption)}</figcaption></figure>")


@dataclass(frozen=True)
class Collapsed:
    """Blocks folded under `title` in HTML (<details>); shown as they are in Markdown."""
    title: str
    blocks: tuple

    def markdown(self, out_dir: Path) -> str:
        return "\n".join(b.markdown(out_dir) for b in self.blocks)

    def html(self, out_dir: Path) -> str:
        return (f"<details><summary>{html.escape(self.title)}</summary>"
                + "".join(b.html(out_dir) for b in self.blocks) + "</details>")


Block = Heading | Paragraph | Table | Figure | Collapsed
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}caption{text-align:left;padding:.3em 0;caption-side:top}
th,td{border-top:1px solid #bbb;border-bottom:1px solid #bbb;padding:.25em .6em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}
ol.notes{font-size:.8em;color:#444}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.85em;color:#444}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}code{background:#f3f3f3;padding:0 .2em}"""


def render_markdown(blocks: Iterable[Block], out_dir: Path) -> str:
    return "\n".join(b.markdown(out_dir) for b in blocks)


def render_html(blocks: Iterable[Block], out_dir: Path, title: str) -> str:
    """One self-contained page: inline CSS, images as data URIs, no external resource (it opens from disk)."""
    body = "\n".join(b.html(out_dir) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
