"""Functions over 60 lines and files over 500 lines outside tests (issue 21's limits).

    python tools/code_shape.py [--max-function 60] [--max-file 500]

Exit status 1 when anything is over; prints one line per offender, longest first.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("runtime", "trainer", "export", "micronet", "benchmarks", "tools")


def offenders(max_function: int, max_file: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    functions, files = [], []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(REPO)
            lines = text.count("\n") + 1
            if lines > max_file:
                files.append((lines, str(rel)))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > max_function:
                        functions.append((length, f"{rel}:{node.lineno} {node.name}"))
    return sorted(functions, reverse=True), sorted(files, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-function", type=int, default=60)
    parser.add_argument("--max-file", type=int, default=500)
    args = parser.parse_args()
    functions, files = offenders(args.max_function, args.max_file)
    for length, where in functions:
        print(f"function {length:4d} lines  {where}")
    for length, where in files:
        print(f"file     {length:4d} lines  {where}")
    print(f"{len(functions)} functions over {args.max_function} lines, {len(files)} files over {args.max_file} lines", file=sys.stderr)
    return 1 if functions or files else 0


if __name__ == "__main__":
    sys.exit(main())
