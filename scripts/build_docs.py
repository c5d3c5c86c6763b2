"""Builds the API reference (`make docs`): pdoc renders the docstrings of twoway_fast and every public
submodule (found by walking the package, so a new module is never left out) into a static site.
Fails on any warning pdoc gives: a module that does not import, a name in __all__ that does not
resolve, an annotation it cannot read.

    python scripts/build_docs.py OUTPUT_DIR
"""
import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc

import twoway_fast


def public_modules() -> list[str]:
    names = ["twoway_fast"]
    for info in pkgutil.walk_packages(twoway_fast.__path__, "twoway_fast."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def main(out: Path) -> int:
    for name in twoway_fast.__all__:  # load the lazily imported names, so pdoc finds them
        getattr(twoway_fast, name)
    pdoc.render.configure(docformat="google", footer_text=f"twoway_fast {twoway_fast.__version__}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*public_modules(), output_directory=out)
    # pdoc adds a package's submodules itself (those in its __all__, or all of them without one), so a
    # submodule also named here is reported as added twice: harmless, one page either way.
    problems = [w for w in caught if "pdoc" in w.filename and "has already been added" not in str(w.message)]
    for w in problems:
        print(f"docs: {w.message}", file=sys.stderr)
    pages = len(list(out.rglob("*.html")))
    print(f"docs: {pages} pages in {out}" if not problems else f"docs: {len(problems)} warning(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
