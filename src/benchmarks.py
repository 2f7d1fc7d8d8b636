"""The benchmarks of the GPT-2 paper's Table 3 as files: which file each task reads, its format,
and the one-line errors that name the file, the line and the fix.

| task | file | format |
|---|---|---|
| lambada | `lambada_test.jsonl` (OpenAI's; fetched when not given) | one JSON object per line, `{"text": passage}` |
| wikitext2, wikitext103 | `wiki.test.tokens` (or `wiki.test.raw`) | WikiText's tokenized text |
| ptb | `ptb.test.txt` (Mikolov's) | one sentence per line, numbers as `N` |
| 1bw | `news.en.heldout-00000-of-00050` | one tokenized sentence per line |
| enwik8 | the test split: the last 5,000,000 bytes of `enwik8` | raw bytes |
| text8 | the test split: the last 5,000,000 characters of `text8` | lowercase letters and spaces |
| cbt-cn, cbt-ne | `cbtest_CN_test_2500ex.txt`, `cbtest_NE_test_2500ex.txt` | see below |

A CBT example is 20 numbered lines (`1 sentence` .. `20 sentence`), then
`21 query with XXXXX<TAB>answer<TAB><TAB>candidate|...|candidate`; a blank line between examples.
A file in another task's format (LAMBADA's JSON lines, CBT's numbered lines) is refused, naming
the file the task expects.
"""
import dataclasses
import json
import re

LANGUAGE_MODELLING = {  # task: (detokenizer, the unit its paper figure is per)
    "wikitext2": ("wikitext", "word"),
    "wikitext103": ("wikitext", "word"),
    "ptb": ("ptb", "word"),
    "1bw": ("1bw", "word"),
    "enwik8": ("none", "byte"),
    "text8": ("none", "character"),
}
TASKS = ("lambada", *LANGUAGE_MODELLING, "cbt-cn", "cbt-ne")
EXPECTED = {  # task: its test file and format, in words, for the errors
    "lambada": "OpenAI's lambada_test.jsonl, one {\"text\": passage} object per line",
    "wikitext2": "WikiText-2's wiki.test.tokens (or wiki.test.raw), WikiText's tokenized text",
    "wikitext103": "WikiText-103's wiki.test.tokens (or wiki.test.raw), WikiText's tokenized text",
    "ptb": "Mikolov's ptb.test.txt, one sentence per line",
    "1bw": "news.en.heldout-00000-of-00050, one tokenized sentence per line",
    "enwik8": "the test split of enwik8, its last 5,000,000 bytes",
    "text8": "the test split of text8, its last 5,000,000 characters",
    "cbt-cn": "cbtest_CN_test_2500ex.txt, CBT's numbered lines and queries",
    "cbt-ne": "cbtest_NE_test_2500ex.txt, CBT's numbered lines and queries",
}
CBT_CANDIDATES = 10
CBT_CONTEXT_LINES = 20
BLANK = "XXXXX"  # where the answer goes in a CBT query
_CBT_QUERY = re.compile(rf"^21 [^\n]*{BLANK}[^\n]*\t", re.MULTILINE)  # a query line


@dataclasses.dataclass
class CbtExample:
    """One Children's Book Test question: 20 sentences, the query with BLANK, the answer among
    the candidates."""
    context: list
    query: str
    answer: str
    candidates: list


def format_of(text):
    """"lambada" if `text` is JSON lines, "cbt" if it is CBT's numbered lines, else None: the
    formats a benchmark's text file is not."""
    first = text.lstrip().split("\n", 1)[0].strip()
    if first[:1] in ("{", "["):
        try:
            if isinstance(json.loads(first), (dict, list)):
                return "lambada"
        except (ValueError, RecursionError):
            pass
    if first.startswith("1 ") and _CBT_QUERY.search(text):
        return "cbt"
    return None


def refuse_other_format(path, text, task):
    """Raise if `text`, read from `path` for `task`, is in the format of another task's file."""
    found = format_of(text)
    if found is None or found == task.split("-")[0]:
        return
    what = "JSON lines, LAMBADA's format" if found == "lambada" else "numbered lines and queries, CBT's format"
    raise ValueError(f"{path} holds {what}, not a test file of --task {task}: give {EXPECTED[task]}")


def check_task(task):
    """`task`, or a ValueError naming the tasks."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}. Received: {task!r}")
    return task


def read_bytes(path):
    """The bytes of a non-empty file."""
    try:
        with open(str(path), "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError) as e:
        what = "not found" if isinstance(e, FileNotFoundError) else "is a folder"
        raise type(e)(f"{path} {what}: give the benchmark's test file (README.md, Evaluate)") from None
    if not data:
        raise ValueError(f"{path} is empty: give the benchmark's test file")
    return data


def read_utf8(path):
    """The text of a non-empty UTF-8 file."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text ({e.reason} at byte {e.start}); "
                         "give the benchmark's test file as it was published") from None


def read_lambada(path):
    """The passages of a LAMBADA jsonl file: one `{"text": "..."}` per line."""
    passages = []
    text = read_utf8(path)
    refuse_other_format(path, text, "lambada")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            raise ValueError(f"{path} line {number}: JSON nested too deeply; LAMBADA's file has one "
                             '{"text": "..."} object per line (OpenAI\'s lambada_test.jsonl)') from None
        except ValueError as e:
            raise ValueError(f"{path} line {number}: not JSON ({e.msg}); LAMBADA's file has one "
                             '{"text": "..."} object per line (OpenAI\'s lambada_test.jsonl)') from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or " " not in text.strip():
            raise ValueError(f"{path} line {number}: expected an object whose \"text\" is a passage of "
                             f"several words, e.g. {{\"text\": \"... he said\"}}. Received: {line[:80]!r}")
        passages.append(text)
    if not passages:
        raise ValueError(f"{path} holds no passage: LAMBADA's file has one {{\"text\": \"...\"}} object per line")
    return passages


def read_language_modelling(path, task):
    """(text to detokenize and score, its length in the task's unit)."""
    if task == "enwik8":
        data = read_bytes(path)
        text = data.decode("utf-8", errors="replace")  # a split may cut a character
        refuse_other_format(path, text, task)
        return text, len(data)
    text = read_utf8(path)
    refuse_other_format(path, text, task)
    if task == "text8":
        if not set(text) <= set("abcdefghijklmnopqrstuvwxyz "):
            raise ValueError(f"{path} is not text8: text8 holds lowercase a-z and spaces only; give its test split")
        return text, len(text)
    if not text.strip():
        raise ValueError(f"{path} holds only white space: give the benchmark's test file")
    return text, count_words(text)


def count_words(text):
    """Words as these benchmarks count them: the whitespace-separated tokens, and one end of
    sentence for each line (WikiText-2's test set: 245,569; PTB's: 82,430)."""
    return len(text.split()) + text.count("\n") + (0 if text.endswith("\n") else 1)


def read_cbt(path, task="cbt-ne"):
    """The examples of a Children's Book Test file, read for `task` (cbt-cn or cbt-ne)."""
    text = read_utf8(path)
    refuse_other_format(path, text, task)
    lines = text.splitlines()
    examples, context = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            if context:
                raise ValueError(f"{path} line {number}: example cut short after {len(context)} lines; "
                                 f"each has {CBT_CONTEXT_LINES} numbered lines and a query line")
            continue
        index, _, sentence = line.partition(" ")
        expected = len(context) + 1
        if index != str(expected):
            raise ValueError(f"{path} line {number}: expected line number {expected} of an example, "
                             f"found {index!r}; give a CBT file such as cbtest_NE_test_2500ex.txt")
        if expected <= CBT_CONTEXT_LINES:
            context.append(sentence)
            continue
        examples.append(cbt_query(path, number, sentence, context))
        context = []
    if context:
        raise ValueError(f"{path}: the last example is cut short after {len(context)} lines")
    if not examples:
        raise ValueError(f"{path} holds no CBT example")
    return examples


def cbt_query(path, number, line, context):
    """The CbtExample of a query line `query\\tanswer\\t\\tc1|...|c10`."""
    fields = line.split("\t")
    if len(fields) != 4 or BLANK not in fields[0]:
        raise ValueError(f"{path} line {number}: expected 'query with {BLANK}<TAB>answer<TAB><TAB>"
                         f"candidate|candidate|...'. Received: {line[:80]!r}")
    query, answer, _, candidates = fields
    candidates = candidates.split("|")
    if len(candidates) < 2 or "" in candidates or len(set(candidates)) < len(candidates):
        # one candidate is always right, and the same one twice or an empty one is no CBT question
        raise ValueError(f"{path} line {number}: expected different, non-empty candidates separated by '|' "
                         f"(CBT's are {CBT_CANDIDATES}). Received: {'|'.join(candidates)[:80]!r}")
    if answer not in candidates:
        raise ValueError(f"{path} line {number}: the answer {answer!r} is not among the candidates")
    return CbtExample(context, query, answer, candidates)


LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"  # the file OpenAI evaluated on
LAMBADA_FILE = "lambada_test.jsonl"
# OpenAI's file as published: its SHA-256 is the one lm-evaluation-harness's first LAMBADA task checked
# (EleutherAI/lm-evaluation-harness, lm_eval/tasks/lambada.py, `sha256sum --check`); its size is that of
# EleutherAI/lambada_openai's data/lambada_test.jsonl on Hugging Face, which has the same SHA-256.
LAMBADA_BYTES = 1819752
LAMBADA_SHA256 = "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"
LAMBADA_PASSAGES = 5153


def lambada_difference(path, n_passages=None):
    """None if `path` is OpenAI's lambada_test.jsonl, else how it differs, in words; `n_passages`:
    how many passages it holds, to say too."""
    import hashlib
    data = read_bytes(path)
    sha256 = hashlib.sha256(data).hexdigest()
    if len(data) == LAMBADA_BYTES and sha256 == LAMBADA_SHA256:
        return None
    this = [f"{len(data):,} bytes", f"SHA-256 {sha256[:16]}..."]
    openais = [f"{LAMBADA_BYTES:,} bytes", f"SHA-256 {LAMBADA_SHA256[:16]}..."]
    if n_passages is not None:
        this.insert(0, f"{n_passages:,} passages")
        openais.insert(0, f"{LAMBADA_PASSAGES:,} passages")
    return f"{', '.join(this)}; OpenAI's: {', '.join(openais)}"


def fetch_lambada(data_dir, url=LAMBADA_URL):
    """The path of OpenAI's LAMBADA test set in `data_dir`, downloaded first when absent, by
    download_model.py's fetch: retried, resumed, checked against the size and MD5 the server
    sends and against OpenAI's size and SHA-256, written to a `.part` file and renamed when whole.
    A file already there must be OpenAI's too."""
    import os
    path = os.path.join(str(data_dir), LAMBADA_FILE)
    if os.path.isfile(path):
        difference = lambada_difference(path)
        if difference is not None:
            raise ValueError(f"{path} is not OpenAI's {LAMBADA_FILE} ({difference}): delete it to download "
                             "it again, or give it as --data_file to evaluate on it anyway")
        return path
    import requests
    import paths
    downloader = download_module()
    made = paths.folders_to_make(str(data_dir))  # removed again if the download fails and leaves them empty
    try:
        os.makedirs(str(data_dir), exist_ok=True)
    except OSError as e:
        problem = "is not a folder" if isinstance(e, (FileExistsError, NotADirectoryError)) else \
            f"cannot be made ({e.strerror})"
        raise OSError(f"--data_dir {data_dir} {problem}: give a folder to download LAMBADA into, or its test set as "
                      "--data_file") from None
    full = paths.disk_full_said(data_dir, f"{path} is not downloaded; free space there and run again to resume, or "
                                "give another --data_dir")
    try:
        with full, requests.Session() as session:
            downloader.fetch_file(session, url, path, released=downloader.Released(LAMBADA_BYTES, LAMBADA_SHA256))
    except downloader.DownloadError as e:  # its hints name download_model.py's flags, not evaluate.py's
        hint = " (check --lambada_url)" if e.hint else ""
        rerun = "run again, or " if e.rerun_helps else ""  # to resume a cut transfer, or fetch a deleted file anew
        raise OSError(f"cannot download LAMBADA: {e.bare}{hint}; {rerun}give --data_file") from None
    finally:
        if not os.path.exists(path):  # failed: a .part to resume from keeps its folder
            paths.remove_empty(made)
    return path


def download_module():
    """download_model.py, which lives beside src/ (the scripts' folder is on the path, its parent
    is not)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "download_model.py")
    spec = importlib.util.spec_from_file_location("download_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
