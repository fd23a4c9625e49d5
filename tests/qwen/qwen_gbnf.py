"""A small pure-Python GBNF parser and matcher, mirroring llama.cpp's grammar syntax
(src/llama-grammar.cpp): literals, char classes, rule refs, groups, . and * + ? {m} {m,} {m,n}.

llama-cpp-python has no Python-side GBNF parser, so tests use this to check that generated grammars
are well formed (every referenced rule defined) and accept / reject sample outputs. The native
check against llama.cpp itself is in native_grammar.py.
"""

from __future__ import annotations

import sys
from functools import cache

_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}


class GbnfError(ValueError):
    pass


class Grammar:
    def __init__(self, text: str) -> None:
        self.src, self.pos = text, 0
        self.rules: dict[str, tuple] = {}
        self.refs: set[str] = set()
        self._skip(newlines=True)
        while self.pos < len(self.src):
            self._rule()
        missing = self.refs - set(self.rules)
        if missing:
            raise GbnfError(f"undefined rules: {sorted(missing)}")

    # -- parsing -------------------------------------------------------------------------------

    def _skip(self, newlines: bool) -> None:
        s = self.src
        while self.pos < len(s):
            c = s[self.pos]
            if c == "#":
                while self.pos < len(s) and s[self.pos] not in "\r\n":
                    self.pos += 1
            elif c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            else:
                break

    def _name(self) -> str:
        start = self.pos
        while self.pos < len(self.src) and (self.src[self.pos].isalnum() or self.src[self.pos] in "-_"):
            self.pos += 1
        if start == self.pos:
            raise GbnfError(f"expecting name at {self.src[start:start + 20]!r}")
        return self.src[start:self.pos]

    def _rule(self) -> None:
        name = self._name()
        self._skip(newlines=False)
        if not self.src.startswith("::=", self.pos):
            raise GbnfError(f"expecting ::= after {name}")
        self.pos += 3
        self._skip(newlines=True)
        if name in self.rules:
            raise GbnfError(f"rule {name} defined twice")
        self.rules[name] = self._alternates(nested=False)
        if self.pos < len(self.src) and self.src[self.pos] not in "\r\n":
            raise GbnfError(f"expecting newline at {self.src[self.pos:self.pos + 20]!r}")
        self._skip(newlines=True)

    def _alternates(self, nested: bool) -> tuple:
        alts = [self._sequence(nested)]
        while self.pos < len(self.src) and self.src[self.pos] == "|":
            self.pos += 1
            self._skip(newlines=True)
            alts.append(self._sequence(nested))
        return ("alt", alts)

    def _char(self) -> str:
        s = self.src
        if s[self.pos] == "\\":
            esc = s[self.pos + 1]
            if esc in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[esc]
                value = int(s[self.pos + 2:self.pos + 2 + width], 16)
                self.pos += 2 + width
                return chr(value)
            if esc not in _ESCAPES:
                raise GbnfError(f"unknown escape \\{esc}")
            self.pos += 2
            return _ESCAPES[esc]
        self.pos += 1
        return s[self.pos - 1]

    def _sequence(self, nested: bool) -> tuple:
        items: list[tuple] = []
        s = self.src
        while self.pos < len(s):
            c = s[self.pos]
            if c == '"':
                self.pos += 1
                text = []
                while s[self.pos] != '"':
                    text.append(self._char())
                self.pos += 1
                items.append(("lit", "".join(text)))
            elif c == "[":
                self.pos += 1
                negate = s[self.pos] == "^"
                self.pos += negate
                ranges = []
                while s[self.pos] != "]":
                    lo = self._char()
                    hi = lo
                    if s[self.pos] == "-" and s[self.pos + 1] != "]":
                        self.pos += 1
                        hi = self._char()
                    ranges.append((lo, hi))
                self.pos += 1
                items.append(("cls", negate, tuple(ranges)))
            elif c.isalnum() or c in "-_":
                name = self._name()
                self.refs.add(name)
                items.append(("ref", name))
            elif c == "(":
                self.pos += 1
                self._skip(newlines=True)
                group = self._alternates(nested=True)
                if s[self.pos:self.pos + 1] != ")":
                    raise GbnfError("expecting )")
                self.pos += 1
                items.append(group)
            elif c == ".":
                self.pos += 1
                items.append(("any",))
            elif c in "*+?{":
                if not items:
                    raise GbnfError("repetition without an item")
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(c, (None, None))
                self.pos += 1
                if c == "{":
                    end = s.index("}", self.pos)
                    lo_s, _, hi_s = s[self.pos:end].partition(",")
                    lo = int(lo_s)
                    hi = lo if "," not in s[self.pos:end] else (int(hi_s) if hi_s.strip() else None)
                    self.pos = end + 1
                items[-1] = ("rep", items[-1], lo, hi)
            else:
                break
            self._skip(newlines=nested)
        return ("seq", tuple(items))

    # -- matching ------------------------------------------------------------------------------

    def matches(self, text: str, root: str = "root") -> bool:
        """True if ``text`` as a whole is in the language of ``root``."""
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20 * len(text) + 2000))
        try:
            rules = self.rules

            @cache
            def ref(name: str, pos: int) -> frozenset[int]:
                return node(rules[name], pos)

            def node(n: tuple, pos: int) -> frozenset[int]:
                kind = n[0]
                if kind == "lit":
                    return frozenset([pos + len(n[1])]) if text.startswith(n[1], pos) else frozenset()
                if kind in ("cls", "any"):
                    if pos >= len(text):
                        return frozenset()
                    if kind == "any":
                        return frozenset([pos + 1])
                    hit = any(lo <= text[pos] <= hi for lo, hi in n[2])
                    return frozenset([pos + 1]) if hit != n[1] else frozenset()
                if kind == "ref":
                    return ref(n[1], pos)
                if kind == "alt":
                    return frozenset().union(*(node(a, pos) for a in n[1]))
                if kind == "seq":
                    ends = frozenset([pos])
                    for item in n[1]:
                        ends = frozenset().union(*(node(item, p) for p in ends))
                        if not ends:
                            break
                    return ends
                _, item, lo, hi = n
                result = {pos} if lo == 0 else set()
                frontier, count, seen = {pos}, 0, {pos}
                while frontier and (hi is None or count < hi):
                    count += 1
                    frontier = set().union(*(node(item, p) for p in frontier))
                    if hi is None:
                        frontier -= seen
                        seen |= frontier
                    if count >= lo:
                        result |= frontier
                return frozenset(result)

            return len(text) in ref(root, 0)
        finally:
            sys.setrecursionlimit(limit)
