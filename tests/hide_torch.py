"""A preamble for test subprocesses that hides torch and diffusers, as on a machine without them: every
import finder reports them absent, and each lookup is recorded in `lookups` with the file that made it
(so a test can tell jcompose's own lookups, which must not exist, from third-party availability probes)."""

import os
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN_CODE = tuple(os.path.join(REPO, d) + os.sep for d in ("jcompose", "configs", "input_pipeline"))

HIDE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    lookups = []  # (module name, file that asked)

    def _asker():
        frame = sys._getframe(2)
        while frame and ("importlib" in frame.f_code.co_filename or frame.f_code.co_filename.startswith("<frozen")):
            frame = frame.f_back
        return frame.f_code.co_filename if frame else "?"

    class Hidden(importlib.abc.MetaPathFinder):
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers"):
                lookups.append((name, _asker()))
                return None
            find = getattr(self.inner, "find_spec", None)
            return find(name, path, target) if find else None

        def find_distributions(self, *args, **kwargs):  # package metadata: hidden packages have none
            find = getattr(self.inner, "find_distributions", None)
            return [d for d in (find(*args, **kwargs) if find else ())
                    if (d.metadata["Name"] or "").lower() not in ("torch", "diffusers")]

        def invalidate_caches(self):
            getattr(self.inner, "invalidate_caches", lambda: None)()

    sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
    """
)
