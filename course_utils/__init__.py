"""Helper package for the efficient LLM fine-tuning course kit.

Each lesson's final definitions live here once; notebooks import earlier topics by name:

    >>> from course_utils.lessons.preflight import print_env
    >>> from course_utils.core.runtime import settings
    >>> from course_utils.core.models import load_model, load_tokenizer

Importing the package changes nothing: the offline defaults of the cpu profile (``HF_HUB_OFFLINE=1`` …) are
applied by ``runtime.settings()``, which every notebook's setup cell calls before any Hugging Face library is
imported, and by the model loaders of ``course_utils.core.models``.
"""

from pathlib import Path

__version__ = "0.1.0"

# The checkout this package sits in: notebooks/, data/, images/ and pyproject.toml are found from here.
REPO_ROOT = Path(__file__).resolve().parent.parent

# The one place the repository address lives: badges, the Colab setup cell and the README use it.
REPO_SLUG = "efficient-llm-course/llm-finetuning-course-kit"
REPO_URL = f"https://github.com/{REPO_SLUG}"
