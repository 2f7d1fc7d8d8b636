"""detokenizers.py: hand-written expected outputs, and invertibility on text in each benchmark's style."""
import pytest

import detokenizers

# Lines in the style of each benchmark's test file, and what GPT-2 should read instead.
WIKITEXT = (
    " = Robert Boulter = \n \n"
    " Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role on "
    "the television series The Bill in 2000 . In 2004 Boulter landed a role as \" Craig \" in the episode "
    "\" Teddy 's Story \" of the series ; he starred alongside Mark Strong . \n \n"
    " = = Career = = \n \n = = = 2000 – 2005 = = = \n \n"
    " In 2000 Boulter had a guest @-@ starring role ( his first ) , earning £ 1 @,@ 500 and 3 @.@ 5 % of the "
    "gross . His Dad was n't there ! \n")
WIKITEXT_READ = (
    "= Robert Boulter =\n\n"
    "Robert Boulter is an English film, television and theatre actor. He had a guest-starring role on "
    "the television series The Bill in 2000. In 2004 Boulter landed a role as \"Craig\" in the episode "
    "\"Teddy's Story\" of the series; he starred alongside Mark Strong.\n\n"
    "== Career ==\n\n=== 2000 – 2005 ===\n\n"
    "In 2000 Boulter had a guest-starring role (his first), earning £ 1,500 and 3.5 % of the "
    "gross. His Dad wasn't there!\n")
PTB = (" no it was n't black monday \n"
       " but while the new york stock exchange did n't fall apart friday as the dow jones industrial average "
       "plunged N points most of it in the final hour it barely managed to stay this side of chaos \n"
       " the company 's shares rose $ N to $ N a share \n")
PTB_READ = ("no it wasn't black monday\n"
            "but while the new york stock exchange didn't fall apart friday as the dow jones industrial average "
            "plunged 1 points most of it in the final hour it barely managed to stay this side of chaos\n"
            "the company's shares rose $1 to $1 a share\n")
ONE_BILLION_WORDS = ("The economy grew 2 % , he said .\n"
                     "He said \" we 're fine \" ( mostly ) and paid $ 30 .\n"
                     "Is it over ?\n")
ONE_BILLION_WORDS_READ = ("The economy grew 2 %, he said.\n"
                          "He said \"we're fine\" (mostly) and paid $30.\n"
                          "Is it over?\n")
CBT = ("`` I 'm not going , '' said the boy .\n"
       "`` Why ? ''\n"
       "The King 's son did n't answer ; he went home .\n")
CBT_READ = ("\"I'm not going,\" said the boy.\n"
            "\"Why?\"\n"
            "The King's son didn't answer; he went home.\n")

CASES = [("wikitext", WIKITEXT, WIKITEXT_READ), ("ptb", PTB, PTB_READ),
         ("1bw", ONE_BILLION_WORDS, ONE_BILLION_WORDS_READ), ("cbt", CBT, CBT_READ)]


@pytest.mark.parametrize("name, tokenized, read", CASES)
def test_detokenize_known_answer(name, tokenized, read):
    assert detokenizers.detokenize(name, tokenized) == read


@pytest.mark.parametrize("name, tokenized, read", CASES)
def test_invertible_on_text_in_its_style(name, tokenized, read):
    assert detokenizers.retokenize(name, read) == tokenized
    for line in tokenized.splitlines(keepends=True):  # line by line too: no rule needs its neighbours
        assert detokenizers.retokenize(name, detokenizers.detokenize(name, line)) == line


def test_none_changes_nothing():
    text = "<page>\n  <title>Anarchism</title> x = 1 , y \n"
    assert detokenizers.detokenize("none", text) == text == detokenizers.retokenize("none", text)


def test_the_documented_limit_an_abbreviation_with_its_period():
    # WikiText keeps "U.S." whole: its period before a space reads as a sentence's, and comes back apart
    assert detokenizers.retokenize("wikitext", detokenizers.detokenize("wikitext", " the U.S. Army \n")) \
        == " the U.S . Army \n"


def test_unknown_detokenizer_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown detokenizer 'moses': the detokenizers are "
                                         "wikitext, ptb, 1bw, cbt, none"):
        detokenizers.detokenize("moses", "x")
