"""Sphinx glue for the book: notebook caches that know the profile and the library, no CDN.

The notebooks scale their work with ``DCLS_PROFILE`` (smoke / cpu / gpu), which the Jupyter kernel
inherits from the build, and compute with ``dcls_lib``.  Jupyter-cache keys a notebook by its code
only, so a book built under one profile, or with an older library, would silently reuse outputs
computed under the other.  Here the cache lives in ``<build>/.jupyter_cache/<profile>-<digest>``,
where the digest hashes dcls_lib's source: changing the profile or the library re-executes the
notebooks (older caches of the profile are removed), and the same key, as a Sphinx config value,
marks every page as outdated.

Jupyter Book always loads sphinx-thebe, which declares a CDN address for live code even when the
launch buttons are off (and declares it twice, a JavaScript error); the book has no live code, so
those scripts are dropped from the pages.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from dcls_lib.runtime import current_profile, device_name, library_digest

_THEBE_CONFIG = re.compile(r'<script type="text/x-thebe-config">.*?</script>', re.S)


def _per_profile_cache(app, config) -> None:
    profile = current_profile()
    config.dcls_execution_key = key = f"{profile}-{library_digest()}"
    if not config.nb_execution_cache_path:
        caches = Path(app.outdir).parent / ".jupyter_cache"
        for stale in caches.glob(f"{profile}-*"):
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
        config.nb_execution_cache_path = str((caches / key).resolve())
    options = dict(config.html_theme_options or {})
    options["announcement"] = (
        f"Results computed in this build: profile <b>{profile}</b> on {device_name()}. "
        "Each figure and table says what produced it."
    )
    config.html_theme_options = options
    # figures are drawn on white: open the book in light mode (readers can still switch)
    config.html_context = {**(config.html_context or {}), "default_mode": "light"}


def _is_thebe(script) -> bool:
    filename = getattr(script, "filename", None) or ""
    body = (getattr(script, "attributes", None) or {}).get("body", "")
    return filename.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body


def _drop_thebe(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = [s for s in context["script_files"] if not _is_thebe(s)]
    if "body" in context:
        context["body"] = _THEBE_CONFIG.sub("", context["body"])


def setup(app):
    app.add_config_value("dcls_execution_key", "", rebuild="env")
    app.connect("config-inited", _per_profile_cache, priority=400)
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
