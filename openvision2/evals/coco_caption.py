r"""COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr) and the COCO PTB tokenisation, in pure Python.

The definitions are those of the COCO caption evaluation toolkit (github.com/tylin/coco-caption,
packaged as pycocoevalcap): `score(references, candidates)` gives the numbers its `COCOEvalCap`
prints for Bleu_1..4, ROUGE_L and CIDEr, without Java at run time. This is a reimplementation from
the published definitions, checked against the toolkit's own scorers and its tokenizer jar
(tests/test_caption_metrics.py).

Tokenisation (`ptb_tokenize`, `ptb_tokenize_lines`)
    The toolkit writes every caption of one call on its own line (newlines inside a caption become
    spaces), runs Stanford CoreNLP 3.4.1's PTBTokenizer as
    `java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase <file>` and keeps, of each
    output line, the space-separated tokens other than `'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : -
    -- ... ;`. PTBTokenizer is a JFlex scanner: at each position the longest match over all of its
    rules wins (a rule `r1/r2` is matched as `r1r2` but produces only `r1`), ties go to the earlier
    rule. The scanner below has the same rules, in the same order, with the same normalisations:
    - the default options of 3.4.1 (no `americanize`: "colour" stays), then each token lower-cased;
    - clitics split off: `'s 're 'll 'd 'm 've n't` ("ca n't", "is n't", "they 're"); `cannot` ->
      "can not", `gonna gotta wanna lemme gimme` -> "gon na" etc., `'tis 'twas` -> "'t is"; words
      kept whole: o'neill, o'clock, shi'ite, nor'easter, c'mon; y'all -> "y' all", rock'n'roll ->
      "rock 'n' roll"; an apostrophe before a word is an opening quote (`'em` stays, though);
    - hyphenated words (well-known), slashes between words (and/or, 24/7), dates (12/25/2015),
      numbers with separators (1,000 3.5 3:30 -2), fractions (1 1/2 is one token, with U+00A0;
      ½ -> 1/2), phone numbers;
    - brackets ( ) [ ] { } -> -LRB- -RRB- -LSB- -RSB- -LCB- -RCB-, lower-cased to -lrb- etc., which
      the punctuation filter (upper-case entries) does NOT drop: COCO keeps "-lrb-" tokens;
    - quotes: " and the curly ‘ ’ “ ” « » become ` ' `` '' (dropped by the filter; ‚ „ stay);
      `--`, `---`, en and em dashes -> "--"; `...`, `. . .`, `…` -> "..."; runs like `!!`, `?!`
      and `-----` stay tokens (they are not in the filter list);
    - currency: `$5` -> "$ 5", `US$` stays one token, £ -> "#", € and ¤ -> "$", ¢ -> "cents";
    - abbreviations (Mr. Dr. St. Ave. U.S. e.g. a.m. Inc. etc.) keep their period, and a
      sentence-final one is repeated as "." (dropped); other sentence-final periods split off;
    - URLs, e-mail addresses, @names and #tags, file names (photo.jpg), emoticons (:) -> ":-rrb-",
      ^_^), simple SGML/HTML tags (`<br>`), `&amp;` and a few other entities;
    - Unicode as the jar sees it: UTF-16 code units, with JFlex 1.5.1's (Unicode 6.x) classes of
      letters, digits and capitals, measured on the jar for every BMP character and tabled below.
      Characters no rule covers are deleted: control characters, symbols outside the jar's list,
      and every character outside the BMP (emoji), except inside URLs and e-mail addresses.
    The jar reads all captions of a call as one stream, and a few rules look past the end of a line
    into the next caption: a caption ending in a one-letter acronym ("plan B.") keeps "b." unless
    the next one starts with "A", "The", "He" etc., then it is "b"; "no." stays whole before a
    caption starting with a digit. `ptb_tokenize_lines` reproduces one jar call over many captions
    exactly, this included; `ptb_tokenize(caption)` is the caption alone in the jar's file.
    Known differences from the jar: none found (tests/test_caption_metrics.py compares a corpus of
    real-world captions, every BMP character in letter, digit and capital contexts, and random
    strings). By design, a line break other than "\n" inside a caption (U+000D, U+000B, U+000C,
    U+2028, U+2029) is a space here, where the jar starts a new output line and pycocoevalcap then
    pairs every later caption of the call with the wrong line. Parts reimplemented from Java for
    rare text only, where exotic input could still differ: the final-sigma rule of Java's
    `toLowerCase` (which follows java.text.BreakIterator's words), and JFlex's capitals taken as the
    jar's letters of Unicode category Lu (Python's database) with the measured exceptions.

BLEU-1..4 (`bleu`), the toolkit's `Bleu(4)`: corpus level. For each image, n-gram counts of the
    candidate are clipped by the largest count of that n-gram in any one reference; clipped matches
    and candidate n-grams are summed over images; the reference length of an image is the
    reference length closest to the candidate's (ties to the shorter) and is summed over images.
    BLEU-n = (prod_{k<=n} (match_k + 1e-15) / (total_k + 1e-9)) ** (1/n), times the brevity
    penalty exp(1 - r/c) when c/r < 1 (c, r the summed candidate and reference lengths, again
    with the 1e-15 / 1e-9 offsets). Words are `str.split()`.
ROUGE-L (`rouge_l`), the toolkit's `Rouge`: per image, with LCS the longest common subsequence of
    words (`str.split(" ")`, so an empty caption is one empty word), P = max over references of
    LCS / len(candidate), R = max over references of LCS / len(reference), score
    (1 + b^2) P R / (R + b^2 P) with b = 1.2 (0 if P or R is 0); the mean over images.
CIDEr (`cider`), the toolkit's `Cider` (the CIDEr-D variant with clipping and a length penalty, no
    stemming): n-grams n = 1..4 of `str.split()` words; document frequency df(g) = the number of
    images whose references contain g, from the references of the evaluated set; a caption's vector
    for each n holds tf(g) * (log N - log max(1, df(g))), N the number of images. Per candidate,
    reference and n: sum over the candidate's n-grams of min(v_c, v_r) * v_r / (|v_c| |v_r|) (no
    division when a norm is 0), times exp(-(l_c - l_r)^2 / (2 * 6^2)) where l is the toolkit's
    length: the number of bigrams of the caption (words - 1, or 0). The image score is 10 * the mean
    over n of the sum over references / number of references; CIDEr is the mean over images.

Files: `load_coco_annotations` reads COCO captions json (`{"annotations": [{"image_id", "caption"}]}`)
or a Karpathy split file (`{"images": [{"cocoid"|"imgid"|"id", "split", "sentences": [{"raw"}]}]}`);
`load_results` reads `[{"image_id", "caption"}]`. As in COCOEvalCap, only the images of the
results are scored (`match_results`). The command is openvision2/tools/caption_metrics.py.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Hashable

__all__ = ["PUNCTUATIONS", "ptb_tokenize", "ptb_tokenize_lines", "bleu", "rouge_l", "cider", "score",
           "load_coco_annotations", "load_results", "match_results"]

# Tokens the toolkit drops after PTB tokenisation (compared with the lower-cased tokens as they are,
# so "-lrb-" and friends survive).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"])

# ----------------------------------------------------------------------------------------------------------------
# Character classes of the jar's scanner, measured by running the jar on every BMP character (Unicode 6.x tables).

# JFlex [:letter:] as compiled into the 3.4.1 jar.
_JAR_LETTERS = (
    "0041-005A 0061-007A 00AA 00B5 00BA 00C0-00D6 00D8-00F6 00F8-02C1 02C6-02D1 02E0-02E4 02EC 02EE 0370-0374 "
    "0376-0377 037A-037D 0386 0388-038A 038C 038E-03A1 03A3-03F5 03F7-0481 048A-0527 0531-0556 0559 0561-0587 "
    "05D0-05EA 05F0-05F2 0620-064A 066E-066F 0671-06D3 06D5 06E5-06E6 06EE-06EF 06FA-06FC 06FF 0710 0712-072F "
    "074D-07A5 07B1 07CA-07EA 07F4-07F5 07FA 0800-0815 081A 0824 0828 0840-0858 08A0 08A2-08AC 0904-0939 093D "
    "0950 0958-0961 0971-0977 0979-097F 0985-098C 098F-0990 0993-09A8 09AA-09B0 09B2 09B6-09B9 09BD 09CE "
    "09DC-09DD 09DF-09E1 09F0-09F1 0A05-0A0A 0A0F-0A10 0A13-0A28 0A2A-0A30 0A32-0A33 0A35-0A36 0A38-0A39 "
    "0A59-0A5C 0A5E 0A72-0A74 0A85-0A8D 0A8F-0A91 0A93-0AA8 0AAA-0AB0 0AB2-0AB3 0AB5-0AB9 0ABD 0AD0 0AE0-0AE1 "
    "0B05-0B0C 0B0F-0B10 0B13-0B28 0B2A-0B30 0B32-0B33 0B35-0B39 0B3D 0B5C-0B5D 0B5F-0B61 0B71 0B83 0B85-0B8A "
    "0B8E-0B90 0B92-0B95 0B99-0B9A 0B9C 0B9E-0B9F 0BA3-0BA4 0BA8-0BAA 0BAE-0BB9 0BD0 0C05-0C0C 0C0E-0C10 "
    "0C12-0C28 0C2A-0C33 0C35-0C39 0C3D 0C58-0C59 0C60-0C61 0C85-0C8C 0C8E-0C90 0C92-0CA8 0CAA-0CB3 0CB5-0CB9 "
    "0CBD 0CDE 0CE0-0CE1 0CF1-0CF2 0D05-0D0C 0D0E-0D10 0D12-0D3A 0D3D 0D4E 0D60-0D61 0D7A-0D7F 0D85-0D96 "
    "0D9A-0DB1 0DB3-0DBB 0DBD 0DC0-0DC6 0E01-0E30 0E32-0E33 0E40-0E46 0E81-0E82 0E84 0E87-0E88 0E8A 0E8D "
    "0E94-0E97 0E99-0E9F 0EA1-0EA3 0EA5 0EA7 0EAA-0EAB 0EAD-0EB0 0EB2-0EB3 0EBD 0EC0-0EC4 0EC6 0EDC-0EDF 0F00 "
    "0F40-0F47 0F49-0F6C 0F88-0F8C 1000-102A 103F 1050-1055 105A-105D 1061 1065-1066 106E-1070 1075-1081 108E "
    "10A0-10C5 10C7 10CD 10D0-10FA 10FC-1248 124A-124D 1250-1256 1258 125A-125D 1260-1288 128A-128D 1290-12B0 "
    "12B2-12B5 12B8-12BE 12C0 12C2-12C5 12C8-12D6 12D8-1310 1312-1315 1318-135A 1380-138F 13A0-13F4 1401-166C "
    "166F-167F 1681-169A 16A0-16EA 1700-170C 170E-1711 1720-1731 1740-1751 1760-176C 176E-1770 1780-17B3 17D7 "
    "17DC 1820-1877 1880-18A8 18AA 18B0-18F5 1900-191C 1950-196D 1970-1974 1980-19AB 19C1-19C7 1A00-1A16 "
    "1A20-1A54 1AA7 1B05-1B33 1B45-1B4B 1B83-1BA0 1BAE-1BAF 1BBA-1BE5 1C00-1C23 1C4D-1C4F 1C5A-1C7D 1CE9-1CEC "
    "1CEE-1CF1 1CF5-1CF6 1D00-1DBF 1E00-1F15 1F18-1F1D 1F20-1F45 1F48-1F4D 1F50-1F57 1F59 1F5B 1F5D 1F5F-1F7D "
    "1F80-1FB4 1FB6-1FBC 1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 1FD6-1FDB 1FE0-1FEC 1FF2-1FF4 1FF6-1FFC 2071 207F "
    "2090-209C 2102 2107 210A-2113 2115 2119-211D 2124 2126 2128 212A-212D 212F-2139 213C-213F 2145-2149 214E "
    "2183-2184 2C00-2C2E 2C30-2C5E 2C60-2CE4 2CEB-2CEE 2CF2-2CF3 2D00-2D25 2D27 2D2D 2D30-2D67 2D6F 2D80-2D96 "
    "2DA0-2DA6 2DA8-2DAE 2DB0-2DB6 2DB8-2DBE 2DC0-2DC6 2DC8-2DCE 2DD0-2DD6 2DD8-2DDE 2E2F 3005-3006 3031-3035 "
    "303B-303C 3041-3096 309D-309F 30A1-30FA 30FC-30FF 3105-312D 3131-318E 31A0-31BA 31F0-31FF 3400-4DB5 "
    "4E00-9FCC A000-A48C A4D0-A4FD A500-A60C A610-A61F A62A-A62B A640-A66E A67F-A697 A6A0-A6E5 A717-A71F "
    "A722-A788 A78B-A78E A790-A793 A7A0-A7AA A7F8-A801 A803-A805 A807-A80A A80C-A822 A840-A873 A882-A8B3 "
    "A8F2-A8F7 A8FB A90A-A925 A930-A946 A960-A97C A984-A9B2 A9CF AA00-AA28 AA40-AA42 AA44-AA4B AA60-AA76 AA7A "
    "AA80-AAAF AAB1 AAB5-AAB6 AAB9-AABD AAC0 AAC2 AADB-AADD AAE0-AAEA AAF2-AAF4 AB01-AB06 AB09-AB0E AB11-AB16 "
    "AB20-AB26 AB28-AB2E ABC0-ABE2 AC00-D7A3 D7B0-D7C6 D7CB-D7FB F900-FA6D FA70-FAD9 FB00-FB06 FB13-FB17 FB1D "
    "FB1F-FB28 FB2A-FB36 FB38-FB3C FB3E FB40-FB41 FB43-FB44 FB46-FBB1 FBD3-FD3D FD50-FD8F FD92-FDC7 FDF0-FDFB "
    "FE70-FE74 FE76-FEFC FF21-FF3A FF41-FF5A FF66-FFBE FFC2-FFC7 FFCA-FFCF FFD2-FFD7 FFDA-FFDC "
)
# JFlex [:digit:] (Nd) as compiled into the jar.
_JAR_DIGITS = (
    "0030-0039 0660-0669 06F0-06F9 07C0-07C9 0966-096F 09E6-09EF 0A66-0A6F 0AE6-0AEF 0B66-0B6F 0BE6-0BEF "
    "0C66-0C6F 0CE6-0CEF 0D66-0D6F 0E50-0E59 0ED0-0ED9 0F20-0F29 1040-1049 1090-1099 17E0-17E9 1810-1819 "
    "1946-194F 19D0-19D9 1A80-1A89 1A90-1A99 1B50-1B59 1BB0-1BB9 1C40-1C49 1C50-1C59 A620-A629 A8D0-A8D9 "
    "A900-A909 A9D0-A9D9 AA50-AA59 ABF0-ABF9 FF10-FF19 "
)
# Marks and modifiers the scanner's word rules accept as letters besides [:letter:].
_WORD_EXTRA = (
    "00AD 0237-024F 02C2-02C5 02D2-02DF 02E5-02FF 0300-036F 0370-037D 0384-0385 03CF 03F6 03FC-03FF 0483-0487 04CF "
    "04F6-04FF 0510-0525 055A-055F 0591-05BD 05BF 05C1-05C2 05C4-05C5 05C7 0615-061A 063B-063F 064B-065E 0670 "
    "06D6-06EF 06FA-06FF 070F 0711 0730-074F 0750-077F 07A6-07B1 07CA-07F5 07FA 0900-0903 093C 093E-094E "
    "0951-0955 0962-0963 0981-0983 09BC-09C4 09C7-09C8 09CB-09CD 09D7 09E2-09E3 0A01-0A03 0A3C 0A3E-0A4F "
    "0A81-0A83 0ABC-0ACF 0B82 0BBE-0BC2 0BC6-0BC8 0BCA-0BCD 0C01-0C03 0C3E-0C56 0D3E-0D44 0D46-0D48 0E30-0E3A "
    "0E47-0E4E 0EB1-0EBC 0EC8-0ECD "
)
# Symbols that are tokens on their own.
_MISC_SYMBOLS = (
    "002B 0025 0026 007E 005E 007C 005C 00A6 00A7 00A8 00A9 00AC 00AE 00AF 00B0-00BA 00D7 00F7 0387 05BE 05C0 05C3 "
    "05C6 05F3 05F4 0600-0603 0606-060A 060C 0614 061B 061E 066A 066D 0703-070D 07F6-07F8 0964 0965 0E4F 1FBD "
    "2016 2017 2020-2023 2030-2038 203B 203E-2042 2044 207A-207F 208A-208E 2100-214F 2190-21FF 2200-2BFF 3012 "
    "30FB FF01-FF0F FF1A-FF20 FF3B-FF40 FF5B-FF65 "
)


def _class(table: str) -> str:
    """A range table ("0041-005A 00AA ...") as the body of a regex character class."""
    parts = []
    for item in table.split():
        lo, _, hi = item.partition("-")
        parts.append(f"\\u{lo.lower()}" + (f"-\\u{hi.lower()}" if hi else ""))
    return "".join(parts)


def _codepoints(table: str) -> Iterable[int]:
    for item in table.split():
        lo, _, hi = item.partition("-")
        yield from range(int(lo, 16), int(hi or lo, 16) + 1)


def _upper_class() -> str:
    """JFlex [:uppercase:] of the jar: its letters of category Lu, except Cherokee (Lo before Unicode 8),
    plus the Other_Uppercase Roman numerals U+2160..U+216F and circled capitals U+24B6..U+24CF."""
    cps = [cp for cp in _codepoints(_JAR_LETTERS)
           if unicodedata.category(chr(cp)) == "Lu" and not 0x13A0 <= cp <= 0x13FF]
    cps += [*range(0x2160, 0x2170), *range(0x24B6, 0x24D0)]
    ranges: list[list[int]] = []
    for cp in sorted(cps):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(f"\\u{a:04x}" + (f"-\\u{b:04x}" if b > a else "") for a, b in ranges)


_L = _class(_JAR_LETTERS)  # [:letter:]
_D = _class(_JAR_DIGITS)  # [:digit:] (the scanner's DIGIT adds U+07C0-07C9, which are already Nd)
_WL = _L + _class(_WORD_EXTRA)  # the scanner's LETTER (without the &eacute;-style entities)
_UP = _upper_class()


# Non-ASCII letters whose Unicode case mappings join them to an ASCII letter's case class.
_CASE_PARTNERS = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}


def _cl(pattern: str) -> str:
    """Make every ASCII letter outside a [...] class match all of its case variants, as JFlex's %caseless
    does (classes, like [A]bout, stay case-sensitive)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            width = {"u": 6, "x": 4, "U": 10}.get(pattern[i + 1], 2)
            out.append(pattern[i:i + width])
            i += width
        elif ch == "[":
            j = i + 1
            while pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            out.append(pattern[i:j + 1])
            i = j + 1
        elif pattern.startswith("(?P<", i):
            j = pattern.index(">", i)
            out.append(pattern[i:j + 1])
            i = j + 1
        elif ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}{_CASE_PARTNERS.get(ch.lower(), '')}]")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------------
# The scanner's macros, as Python regexes (letters are made caseless by _cl when the rules are compiled).

SPACE = r"[ \t\u00a0\u2000-\u200a\u3000]"
NEWLINE = r"(?:\r\n|[\r\n\u2028\u2029\x0b\x0c\x85])"
SPACENL = rf"(?:{SPACE}|{NEWLINE})"
_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
SGML = (rf"<(?:[!?][A-Za-z\-][^>\r\n]*|{_NAME}(?:[ ]+(?:{_NAME}[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")|{_NAME}))*[ ]*/?"
        rf"|/{_NAME})[ ]*>")
SENTEND = rf"{SPACENL}(?:{SPACENL}|[{_UP}]|{SGML})"
SPLET = r"&[aeiouAEIOU](?:acute|grave|uml);"
LETTER = rf"(?:[{_WL}]|{SPLET})"
LETTER_DIGIT = rf"(?:[{_WL}{_D}]|{SPLET})"
DIGIT = rf"[{_D}]"
LD = rf"[{_L}{_D}]"  # [:letter:]|[:digit:]
NUM = rf"(?:{DIGIT}*(?:[.:,\u00ad\u066b\u066c]{DIGIT}+)+|{DIGIT}+)"
WORD = rf"{LETTER}{LETTER_DIGIT}*(?:[.!?]{LETTER}{LETTER_DIGIT}*)*"
APOS = r"(?:['\x92\u2019]|&apos;)"
APOSETC = rf"(?:{APOS}|[`\x91\u2018\u201b])"
HYPHEN = r"[\-_\u058a\u2010\u2011]"
ACRO_ALTS = (r"[A-Za-z](?:\.[A-Za-z])*", r"(?:Canada|Sino|Korean|EU|Japan|non)-U\.S", r"U\.S\.-(?:U\.K|U\.S\.S\.R)")
ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{ACRO_ALTS[1]}|{ACRO_ALTS[2]})"
SPAMP = "&amp;"
REDAUX = rf"{APOS}(?:[msdMSD]|re|ve|ll)"
SREDAUX = rf"n{APOSETC}t"
FILENAME_EXT = ("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|"
                "png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
THING_PREFIX = rf"[dDoOlL]{APOSETC}{LD}"
HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{ACRO2}\.|[A-Za-z0-9\u00ad]+))+"
THING = rf"(?:{THING_PREFIX})?{LD}+(?:{HYPHEN}(?:{THING_PREFIX})?{LD}+)*"
THINGA = rf"[A-Z]+(?:(?:{SPAMP}|[+&])[A-Z]+)+"
_URL_END = r"[^ \t\n\f\r\"<>|.!?(){},\-]"
URL_PATH = rf"(?:/[^ \t\n\f\r\"<>|()]+{_URL_END})?"
_EMAIL_PART = r"[^ \t\n\f\r\"<>|(){}.\u00a0]+"
ABBREV1_WORDS = (
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"  # months ("May." is no abbreviation)
    "|Mon|Tue|Tues|Wed|Thu|Thurs|Fri"  # days
    "|Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|[M]iss"
    "|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo"  # states
    "|Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"  # companies
    "|tel|est|ext|sq|Jr|Sr|Bros|(?:Ed|Ph)\\.D|Blvd|Rd|Esq|etc|al|seq|Bldg")
ABBREV1 = rf"(?:{ABBREV1_WORDS})\."
ABBREV4_WORDS = (
    "Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave"
    "|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc"  # titles
    "|vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph|Invt|Elec|Natl|M[ft]g|Dept")
ABBREV4_ALTS = (f"(?:{ABBREV4_WORDS})", *ACRO_ALTS)
# Words after which an acronym's period also ends the sentence.
_SENTENCE_STARTS = (
    "[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever|[I]f"
    "|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome"
    "|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou")
PHONE = (r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])[0-9]{3,4}"
         r"[\- \u00a0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
INSENTP = r"[,;:\u3001]"
_QUOTE_CHARS = r"[`\u2018\u2019\u201a\u201b\u201c\u201d\x91\x92\x93\x94\u201e\u201f\u2039\u203a\xab\xbb]"
_ASIAN = r"[\^x=~<>]"

# ----------------------------------------------------------------------------------------------------------------
# Token normalisations (what the scanner's actions do to the matched text).

_LEFT_SINGLE = re.compile("[\x91\u2018\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\x92\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\x93\u201c\xab]")
_RIGHT_DOUBLE = re.compile("[\x94\u201d\xbb]")
_AMP = re.compile("&amp;", re.IGNORECASE)
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\x80": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}


def _quotes(tok: str, left: bool) -> str:
    """LaTeX-style quotes: ASCII ' and " by the guessed side, curly ones by their own side."""
    single, double = ("`", "``") if left else ("'", "''")
    tok = tok.replace("&apos;", single).replace("'", single).replace('"', double).replace("&quot;", double)
    tok = _LEFT_SINGLE.sub("`", tok)
    tok = _RIGHT_SINGLE.sub("'", tok)
    tok = _LEFT_DOUBLE.sub("``", tok)
    return _RIGHT_DOUBLE.sub("''", tok)


def _no_soft_hyphens(tok: str) -> str:
    return tok.replace("\u00ad", "") or "-"


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


Action = Callable[[str], "tuple[str | None, int]"]


def _keep(tok):
    return tok, len(tok)


def _as(fn):
    return lambda tok: (fn(tok), len(tok))


def _head(k):
    """Return the first k characters and rescan the rest."""
    return lambda tok: (tok[:k], k)


def _skip(tok):
    return None, len(tok)


def _with_period_again(tok):
    """An abbreviation that ends a sentence: the token keeps its period, and the period is scanned again."""
    return tok, len(tok) - 1


def _acronym_at_sentence_end(tok):
    if len(tok) == 2:  # "I." and the like: the letter, then the period
        return tok[:1], 1
    return tok, len(tok) - 1


def _dashes(tok):
    return ("--" if 3 <= len(tok) <= 4 else tok), len(tok)


class _Rule:
    """One scanner rule: alternatives (regexes; group `t` marks the produced part of an `r1/r2` rule),
    an action, and the characters a match can start with (a speed filter)."""

    def __init__(self, first: str | None, alts: Sequence[str], action: Action = _keep, longest: str | None = None):
        self.first = re.compile(first) if first else None
        self.alts = [re.compile(_cl(a), re.DOTALL) for a in alts]
        self.action = action
        # Rules whose greedy match may be shorter than the longest one: candidate ends are tried.
        self.longest = longest

    def match(self, text: str, pos: int) -> tuple[int, str] | None:
        best = None
        for alt in self.alts:
            m = alt.match(text, pos)
            if m is None:
                continue
            end = m.end()
            if self.longest is not None:
                for cand in self._ends(text, pos, end):
                    m2 = alt.fullmatch(text, pos, cand)
                    if m2 is not None:
                        m, end = m2, cand
                        break
            if best is None or end > best[0]:
                best = (end, m.group("t") if "t" in alt.groupindex else m.group(0))
        return best

    def _ends(self, text, pos, end):
        if self.longest == "sgml":
            ends = [i + 1 for i in range(end, min(len(text), pos + 2000)) if text[i] == ">"]
        else:  # bounded length
            ends = range(end + 1, min(len(text), pos + 40) + 1)
        return reversed(ends)


def _t(r1: str, r2: str) -> str:
    """A trailing-context rule r1/r2."""
    return f"(?P<t>{r1}){r2}"


_ANY = None
_AP1 = "['\x92\u2019&]"  # what APOS can start with


@functools.lru_cache(maxsize=None)
def _rules() -> tuple[_Rule, ...]:
    """The scanner's rules, in the jar's order (compiled on first use: the big Unicode classes take a while)."""
    return (
        _Rule("[cC]", [r"c\+\+"]),
        _Rule("[cCfF]", [r"(?:c|f)#"]),
        _Rule("[cC]", ["cannot"], _head(3)),
        _Rule("'", ["'twas"], _head(2)),
        _Rule("'", ["'tis"], _head(2)),
        _Rule("[gGlLwW]", ["gonna|gotta|lemme|gimme|wanna"], _head(3)),
        _Rule("<", [SGML], _as(lambda t: t.replace(" ", "\u00a0")), longest="sgml"),
        _Rule("[&\x96\x97\u2013\u2014\u2015]", [r"&(?:MD|mdash|ndash);|[\x96\x97\u2013\u2014\u2015]"],
              _as(lambda t: "--")),
        _Rule("&", [SPAMP], _as(lambda t: _AMP.sub("&", t))),
        _Rule("&", [r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"]),
        _Rule(f"[{_WL}&]", [_t(WORD, REDAUX)], _as(_no_soft_hyphens)),
        _Rule("[A-Za-z\u00ad]", [_t(r"[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*", SREDAUX)], _as(_no_soft_hyphens)),
        _Rule(f"[{_WL}&]", [WORD], _as(_no_soft_hyphens)),
        _Rule(f"[{_L}\x92\u2019&']", [  # words with an apostrophe inside
            rf"{APOS}n{APOS}?", rf"[lLdDjJ]{APOS}", rf"Dunkin{APOS}", rf"somethin{APOS}", rf"ol{APOS}", rf"{APOS}em",
            rf"[A-HJ-XZn]{APOSETC}[{_L}]{{2}}[{_L}]*", rf"{APOS}[2-9]0s", rf"{APOS}till?",
            rf"[{_L}][{_L}]*[aeiouyAEIOUY]{APOSETC}[aeiouA-Z][{_L}]*", rf"{APOS}cause", r"cont'd\.?", "'twas",
            "nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l", rf"O{APOSETC}o"]),
        _Rule("[yY]", [_t(rf"y{APOS}", f"[{_L}]")]),
        _Rule("[hH]", [rf"https?://[^ \t\n\f\r\"<>|(){{}}]+{_URL_END}"]),
        _Rule(_ANY, [rf"www\.(?:[^ \t\n\f\r\"<>|.!?(){{}},]+\.)+[a-zA-Z]{{2,4}}{URL_PATH}",
                     rf"(?:[^ \t\n\f\r\"`'<>|.!?(){{}}\x2c-\x5f$]+\.)+(?:com|net|org|edu){URL_PATH}"]),
        _Rule("[&<a-zA-Z0-9]", [rf"(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{{}}]*@(?:{_EMAIL_PART}\.)*"
                                rf"{_EMAIL_PART}(?:&gt;|>)?"]),
        _Rule("[@#]", [r"@[a-zA-Z_][a-zA-Z_0-9]*", rf"#{LETTER}+"]),
        _Rule(_AP1, [_t(REDAUX, "[^A-Za-z]")], _as(lambda t: _quotes(t, False))),
        _Rule("[nN]", [_t(SREDAUX, "[^A-Za-z]")], _as(lambda t: _quotes(t, False))),
        _Rule(f"[{_D}]", [rf"{DIGIT}{{1,2}}[\-/]{DIGIT}{{1,2}}[\-/]{DIGIT}{{2,4}}"]),  # dates
        _Rule(f"[{_D}\\-+.:,\u00ad\u066b\u066c]", [rf"[\-+]?{NUM}"], _as(_no_soft_hyphens)),
        _Rule("[\u207a\u207b\u208a\u208b\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u2080-\u2089]",
              [r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"]),
        _Rule(f"[{_D}]", [rf"(?:{DIGIT}{{1,4}}[\- \u00a0])?{DIGIT}{{1,4}}(?:\\?/|\u2044){DIGIT}{{1,4}}"],
              _as(lambda t: t.replace(" ", "\u00a0"))),  # fractions
        _Rule("[\u00bc\u00bd\u00be\u2153-\u215e]", [r"[\u00bc\u00bd\u00be\u2153-\u215e]"],
              _as(lambda t: _FRACTIONS.get(t, t))),
        _Rule("[\\-cCpPaAsS]", [r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-", r"C\.D\.s", "pro-", "anti-", r"S(?:&|&amp;)P-500",
                                 r"S(?:&|&amp;)Ls", rf"Cap{APOS}n", rf"c{APOS}est"], _as(lambda t: _AMP.sub("&", t))),
        _Rule("[A-Za-z0-9]", [r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"]),
        _Rule("[A-Z$#]", [r"[A-Z]*\$|#"]),
        _Rule("[\u00a2\u00a3\u00a4\u00a5\x80\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
              [r"[\u00a2\u00a3\u00a4\u00a5\x80\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"],
              _as(lambda t: "".join(_CURRENCY.get(c, c) for c in t))),
        _Rule("[A-Za-z]", [_t(rf"{a}\.", rf"{SPACENL}+(?:{_SENTENCE_STARTS}|{SGML}){SPACENL}") for a in ACRO_ALTS],
              _acronym_at_sentence_end),
        _Rule("[cCfFpPnNaAbBoO]", [_t(r"(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\.", f"{SPACENL}?[{_D}]")]),
        _Rule("[pPcC]", [_t(r"(?:pt[eyEY]|co)\.", f"{SPACE}(?:ltd|lim)")]),
        _Rule("[A-Za-z]", [_t(ABBREV1, SENTEND)], _with_period_again),
        _Rule("[A-Za-z]", [_t(ABBREV1, ".{2}")]),
        _Rule("[A-Za-z]", [ABBREV1], _with_period_again),
        _Rule("[A-Za-z]", [rf"{a}\." for a in ABBREV4_ALTS]),
        _Rule("[A-Za-z]", [_t(a, SPACE) for a in ABBREV4_ALTS]),
        _Rule("[A-Za-z]", [_t(a, SPACENL) for a in ACRO_ALTS]),
        _Rule(_AP1, [_t(rf"{APOS}[0-9][0-9]", SPACENL)]),
        _Rule(f"[{_WL}{_D}&]", [_t(rf"{LETTER_DIGIT}+(?:\.{LETTER_DIGIT}+)*\.(?:{FILENAME_EXT})",
                                  rf"(?:{SPACENL}|[.?!,])")]),
        _Rule(f"[{_WL}&]", [_t(rf"{WORD}\.", INSENTP)], _as(_no_soft_hyphens)),
        _Rule("[(+0-9]", [PHONE], _as(lambda t: _parens(t.replace(" ", "\u00a0"))), longest="bounded"),
        _Rule('["&]', [_t('"|&quot;', "[A-Za-z0-9$]")], _as(lambda t: _quotes(t, True))),
        _Rule('["&]', ['"|&quot;'], _as(lambda t: _quotes(t, False))),
        _Rule("\x7f", ["\x7f"], _skip),
        _Rule("[<&]", ["<|&lt;"], _as(lambda t: "<")),
        _Rule("[>&]", [">|&gt;"], _as(lambda t: ">")),
        _Rule("[<>:;=]", [_t(r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]", "[^A-Za-z0-9]")], _as(_parens)),
        _Rule("[\\^x=~<>\\-'(]", [rf"{_ASIAN}\.\[\^x=~<>\]", r"[\-\^x=~<>']_[\-\^x=~<>']",
                                  r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)", r"\([\^x=~<>']-[\^x=~<>'`]\)"], _as(_parens)),
        _Rule("[{]", [r"\{"], _as(lambda t: "-LCB-")),
        _Rule("[}]", [r"\}"], _as(lambda t: "-RCB-")),
        _Rule("\\[", [r"\["], _as(lambda t: "-LSB-")),
        _Rule("\\]", [r"\]"], _as(lambda t: "-RSB-")),
        _Rule("[(]", [r"\("], _as(lambda t: "-LRB-")),
        _Rule("[)]", [r"\)"], _as(lambda t: "-RRB-")),
        _Rule("-", [r"-+"], _dashes),
        _Rule("[.\x85\u2026]", [r"\.{3,5}", r"(?:\.[ \u00a0]){2,4}\.", r"[\x85\u2026]"], _as(lambda t: "...")),
        _Rule("[@#_]", ["@+", "#+", "_+"]),
        _Rule("[*\\\\]", [r"\*+", r"(?:\\\*){1,3}"]),
        _Rule(INSENTP, [INSENTP]),
        _Rule("[?!]", ["[?!]+"]),
        _Rule("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]",
              ["[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"]),
        _Rule("=", ["="]),
        _Rule("/", ["/"]),
        _Rule("[A-Za-z0-9]", [_t(rf"{HTHING}\.", INSENTP)], _as(_no_soft_hyphens)),
        _Rule("[A-Za-z0-9]", [HTHING], _as(_no_soft_hyphens)),
        _Rule(f"[{_L}{_D}]", [_t(rf"{THING}\.", INSENTP)]),
        _Rule(f"[{_L}{_D}]", [THING]),
        _Rule("[A-Z]", [_t(rf"{THINGA}\.", INSENTP)], _as(lambda t: _AMP.sub("&", t))),
        _Rule("[A-Z]", [THINGA], _as(lambda t: _AMP.sub("&", t))),
        _Rule("'", [_t("'", "[A-Za-z][^ \t\n\r\u00a0]")], _as(lambda t: _quotes(t, True))),
        _Rule(_AP1, [REDAUX], _as(lambda t: _quotes(t, False))),
        _Rule("[nN]", [SREDAUX], _as(lambda t: _quotes(t, False))),
        _Rule(f"{_AP1[:-1]}`\u2018\u2019\u201a\u201b\u201c\u201d\x91\x92\x93\x94\u201e\u201f\u2039\u203a\xab\xbb]",
              [APOS, "''", f"{_QUOTE_CHARS}{{1,2}}"], _as(lambda t: _quotes(t, False))),
        _Rule("[<>]", ["<<|>>"]),
        _Rule(f"[{_class(_MISC_SYMBOLS)}]", [f"[{_class(_MISC_SYMBOLS)}]"]),
        _Rule(None, [r"\x00|[ \t\u00a0\u2000-\u200a\u3000]+|[\u200b\u200e\u200f\ufeff]"], _skip),
        _Rule(None, [NEWLINE], _skip),  # handled by the scanner loop
        _Rule("&", ["&nbsp;"], _skip),

    )


_NEWLINE_RULE = -2  # index in _rules()
_SPACES = re.compile(f"{SPACE}+")
_FAST_WORD = re.compile(r"[A-Za-z]+(?=[ \n]|\Z)")
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])  # rules that beat WORD
_candidates: dict[str, tuple[_Rule, ...]] = {}


def _rules_for(ch: str) -> tuple[_Rule, ...]:
    rules = _candidates.get(ch)
    if rules is None:
        probes = [ch] + [c for a in _CASE_PARTNERS.items() if ch in a[1] for c in (a[0], a[0].upper())]
        rules = _candidates[ch] = tuple(r for r in _rules() if r.first is None or any(r.first.match(c) for c in probes))
    return rules


def _scan(text: str) -> list[list[str]]:
    """Tokens of `text` as the jar's scanner produces them (not yet lower-cased), one list per "\n"-line."""
    lines: list[list[str]] = [[]]
    tokens = lines[0]
    pos, n = 0, len(text)
    while pos < n:
        ch = text[pos]
        if ch == " ":  # a run of spaces is skipped as one match (it can swallow a U+00A0 a URL would start with)
            pos = _SPACES.match(text, pos).end()
            continue
        if ch == "\n":
            tokens = []
            lines.append(tokens)
            pos += 1
            continue
        m = _FAST_WORD.match(text, pos)
        if m is not None and m.group(0).lower() not in _SPLIT_WORDS:
            tokens.append(m.group(0))
            pos = m.end()
            continue
        best, best_end, best_text = None, pos, ""
        for rule in _rules_for(ch):
            got = rule.match(text, pos)
            if got is not None and got[0] > best_end:
                best, (best_end, best_text) = rule, got
        if best is None:  # untokenizable: the jar deletes the character
            pos += 1
            continue
        if best is _rules()[_NEWLINE_RULE]:
            if "\n" in best_text:
                tokens = []
                lines.append(tokens)
            pos = best_end
            continue
        tok, consumed = best.action(best_text)
        if tok is not None:
            tokens.append(tok)
        pos += consumed
    return lines


_KANJI_KANA = re.compile("[\u3005\u4e00-\u9fa5\uf900-\ufa2d\u3041-\u309e\u30a1-\u30fe]")
_JAVA_WORD = re.compile("(?:L+(?:[wb]L+)*|N+(?:[nb]N+)*)+")


def _java_kind(ch: str) -> str:
    cat = unicodedata.category(ch)
    if (cat[0] == "L" or cat == "Mc") and not _KANJI_KANA.match(ch):
        return "L"
    if cat[0] == "N":
        return "N"
    if ch in "'\".":
        return "b"  # joins letters and numbers
    if ch in ",\u066b":
        return "n"  # joins numbers
    if cat in ("Pd", "Pc") or ch in "\u00ad\u2027":
        return "w"  # joins letters
    return "o"


def _java_word_span(tok: str, i: int) -> tuple[int, int]:
    """The word around tok[i] as java.text.BreakIterator (legacy rules) segments it, as far as the final sigma
    needs: letters joined by dashes, connectors, U+00AD, U+2027, ' " and ., numbers joined by ' " , . and U+066B,
    letter and number runs next to each other; format characters are transparent, marks are after a letter or
    number; a letter outside the BMP ends its word."""
    units, kinds = [], []  # char index of each unit, and its kind
    for j, ch in enumerate(tok):
        cat = unicodedata.category(ch)
        if cat == "Cf" and ch != "\u00ad" or cat in ("Mn", "Me") and kinds and kinds[-1] in "LN":
            continue
        if ord(ch) > 0xFFFF:
            units += [j, j]
            kinds += ["L" if cat[0] == "L" else "o", "o"]
        else:
            units.append(j)
            kinds.append("o" if cat in ("Mn", "Me") else _java_kind(ch))
    for m in _JAVA_WORD.finditer("".join(kinds)):
        start, end = units[m.start()], units[m.end() - 1] + 1
        if start <= i < end:
            return start, end
    return i, i + 1


def _cased(ch: str) -> bool:
    return ch.islower() or ch.isupper() or unicodedata.category(ch) == "Lt"


def _java_lower(tok: str) -> str:
    """`tok.toLowerCase(Locale.ENGLISH)` in Java: as str.lower, but a capital sigma is final (ς) when a cased
    letter precedes it and none follows it within its word as java.text.BreakIterator segments words."""
    if "\u03a3" not in tok:
        return tok.lower()
    out = []
    for i, ch in enumerate(tok):
        if ch != "\u03a3":
            out.append(ch.lower())
            continue
        start, end = _java_word_span(tok, i)
        final = any(_cased(c) for c in tok[start:i]) and not any(_cased(c) for c in tok[i + 1:end])
        out.append("\u03c2" if final else "\u03c3")
    return "".join(out)


def _coco_line(tokens: Sequence[str]) -> str:
    """The toolkit's post-processing of one output line of the jar: lower-cased tokens joined by spaces,
    then split on spaces with the punctuation removed."""
    line = " ".join(_java_lower(tok) for tok in tokens)
    return " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_SURROGATES = re.compile("[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]")


def _to_utf16(text: str) -> str:
    """Characters outside the BMP as two surrogate code units, as Java's scanner sees them (no rule takes a
    surrogate but the negated classes of URLs and e-mail addresses, and lengths count code units)."""
    def pair(m):
        cp = ord(m.group(0)) - 0x10000
        return chr(0xD800 + (cp >> 10)) + chr(0xDC00 + (cp & 0x3FF))
    return _ASTRAL.sub(pair, text)


def _from_utf16(tok: str) -> str:
    def join(m):
        s = m.group(0)
        if len(s) == 1:
            return "?"  # what Java's UTF-8 encoder writes for a lone surrogate
        return chr(0x10000 + ((ord(s[0]) - 0xD800) << 10) + ord(s[1]) - 0xDC00)
    return _SURROGATES.sub(join, tok)


def _scan_lines(captions: Sequence[str]) -> list[list[str]]:
    """The scanner's tokens for each caption of one jar run over these captions, one per line."""
    text = "\n".join(c.replace("\n", " ") for c in captions)
    if _ASTRAL.search(text) is None:
        return _scan(text)
    return [[_from_utf16(tok) for tok in tokens] for tokens in _scan(_to_utf16(text))]


def ptb_tokenize_lines(captions: Iterable[str]) -> list[str]:
    """What one call of the toolkit's PTBTokenizer.tokenize gives for these captions, in this order
    (they are one stream for the jar: a caption's end can look at the start of the next one)."""
    captions = list(captions)
    if not captions:
        return []
    lines = _scan_lines(captions)
    assert len(lines) == len(captions), (len(lines), len(captions))
    return [_coco_line(tokens) for tokens in lines]


def ptb_tokenize(text: str) -> str:
    """The toolkit's tokenisation of one caption (PTBTokenizer -preserveLines -lowerCase, punctuation removed)."""
    return ptb_tokenize_lines([text])[0]


# ----------------------------------------------------------------------------------------------------------------
# Metrics, on tokenised captions (words separated by spaces).

Key = Hashable


def _check(references: Mapping[Key, Sequence[str]], candidates: Mapping[Key, str]) -> list[Key]:
    """The image ids in the references' order, after checking both sides hold the same ids and valid captions."""
    missing = [k for k in references if k not in candidates]
    extra = [k for k in candidates if k not in references]
    if missing or extra:
        def ids(keys):
            return ", ".join(repr(k) for k in keys[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "")
        parts = ([f"no candidate for {len(missing)} reference image id(s): {ids(missing)}"] if missing else []) + \
                ([f"no references for {len(extra)} candidate image id(s): {ids(extra)}"] if extra else [])
        raise ValueError("references and candidates must have the same image ids: " + "; ".join(parts))
    if not references:
        raise ValueError("no images to score: references and candidates are empty")
    for k, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs:
            raise ValueError(f"references[{k!r}] must be a non-empty list of caption strings, got {refs!r:.80}")
        if not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{k!r}] holds a non-string caption: {refs!r:.80}")
        if not isinstance(candidates[k], str):
            raise ValueError(f"candidates[{k!r}] must be exactly one caption string, got {candidates[k]!r:.80}")
    return list(references)


def _ngram_counts(words: Sequence[str], n: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def bleu(references: Mapping[Key, Sequence[str]], candidates: Mapping[Key, str], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of tokenised captions, as the toolkit's Bleu(n) (see the module docstring)."""
    keys = _check(references, candidates)
    matches, totals = [0] * n, [0] * n
    cand_len = ref_len = 0
    for key in keys:
        words = candidates[key].split()
        max_ref: dict[tuple, int] = {}
        ref_lens = []
        for ref in references[key]:
            ref_words = ref.split()
            ref_lens.append(len(ref_words))
            for gram, count in _ngram_counts(ref_words, n).items():
                if count > max_ref.get(gram, 0):
                    max_ref[gram] = count
        length = len(words)
        cand_len += length
        ref_len += min(ref_lens, key=lambda r: (abs(r - length), r))  # closest, ties to the shorter
        for gram, count in _ngram_counts(words, n).items():
            matches[len(gram) - 1] += min(count, max_ref.get(gram, 0))
        for k in range(n):
            totals[k] += max(0, length - k)
    tiny, small = 1e-15, 1e-9
    scores, product = [], 1.0
    for k in range(n):
        product *= (matches[k] + tiny) / (totals[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (cand_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_row = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = prev_row
    return row[-1]


def rouge_l(references: Mapping[Key, Sequence[str]], candidates: Mapping[Key, str],
            beta: float = 1.2) -> tuple[float, dict[Key, float]]:
    """Mean ROUGE-L over images and the per-image scores, as the toolkit's Rouge."""
    keys = _check(references, candidates)
    per_image = {}
    for key in keys:
        cand = candidates[key].split(" ")
        precision = recall = 0.0
        for ref in references[key]:
            ref_words = ref.split(" ")
            lcs = _lcs(ref_words, cand)
            precision = max(precision, lcs / len(cand))
            recall = max(recall, lcs / len(ref_words))
        if precision and recall:
            per_image[key] = (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
        else:
            per_image[key] = 0.0
    return sum(per_image.values()) / len(per_image), per_image


def cider(references: Mapping[Key, Sequence[str]], candidates: Mapping[Key, str], n: int = 4,
          sigma: float = 6.0) -> tuple[float, dict[Key, float]]:
    """CIDEr (the toolkit's CIDEr-D variant) and the per-image scores, as the toolkit's Cider."""
    keys = _check(references, candidates)
    ref_counts = {key: [_ngram_counts(ref.split(), n) for ref in references[key]] for key in keys}
    doc_freq: collections.Counter = collections.Counter()
    for counts in ref_counts.values():
        doc_freq.update(set().union(*counts))
    log_images = math.log(float(len(keys)))

    def vectors(counts):
        vec: list[dict[tuple, float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            value = tf * (log_images - math.log(max(1.0, doc_freq.get(gram, 0.0))))
            vec[k][gram] = value
            norm[k] += value * value
            if k == 1:  # the toolkit's caption "length" counts bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    per_image = {}
    for key in keys:
        vec, norm, length = vectors(_ngram_counts(candidates[key].split(), n))
        total = [0.0] * n
        for counts in ref_counts[key]:
            vec_ref, norm_ref, length_ref = vectors(counts)
            penalty = math.exp(-(float(length - length_ref) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = 0.0
                for gram, value in vec[k].items():
                    ref_value = vec_ref[k].get(gram, 0.0)
                    val += min(value, ref_value) * ref_value
                if norm[k] != 0 and norm_ref[k] != 0:
                    val /= norm[k] * norm_ref[k]
                total[k] += val * penalty
        per_image[key] = sum(total) / n / len(ref_counts[key]) * 10.0
    return sum(per_image.values()) / len(per_image), per_image


def score(references: Mapping[Key, Sequence[str]], candidates: Mapping[Key, str], tokenize: bool = True) -> dict:
    """BLEU-1..4, ROUGE-L and CIDEr of one candidate caption per image against its references.

    With tokenize=True every caption first goes through `ptb_tokenize_lines`, references and candidates
    each as one stream in the references' image order (as COCOEvalCap does); with tokenize=False the
    captions are taken as already tokenised (words separated by spaces)."""
    keys = _check(references, candidates)
    if tokenize:
        flat = ptb_tokenize_lines(c for key in keys for c in references[key])
        it = iter(flat)
        references = {key: [next(it) for _ in references[key]] for key in keys}
        candidates = dict(zip(keys, ptb_tokenize_lines(candidates[key] for key in keys)))
    b1, b2, b3, b4 = bleu(references, candidates, 4)
    return {"BLEU-1": float(b1), "BLEU-2": float(b2), "BLEU-3": float(b3), "BLEU-4": float(b4),
            "ROUGE-L": float(rouge_l(references, candidates)[0]), "CIDEr": float(cider(references, candidates)[0])}


# ----------------------------------------------------------------------------------------------------------------
# Files.

def _read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what} file {os.fspath(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {os.fspath(path)!r} is not valid UTF-8 JSON: {e}") from None


def _image_id(value: Any, where: str) -> Key:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: image id must be an integer or a string, got {value!r:.60}")
    return value


def load_coco_annotations(path: str | os.PathLike, split: str | None = None) -> dict[Key, list[str]]:
    """Reference captions by image id from a COCO captions file, or from a Karpathy split file
    (then `split`, e.g. "test", keeps only that split's images)."""
    data = _read_json(path, "annotations")
    where = f"annotations file {os.fspath(path)!r}"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a JSON object with an 'annotations' list (COCO captions) or an "
                         f"'images' list with 'sentences' (Karpathy split), not a {type(data).__name__}")
    refs: dict[Key, list[str]] = {}
    if "annotations" in data:
        if split is not None:
            raise ValueError(f"{where} is a COCO captions file, which has no splits: drop --split")
        anns = data["annotations"]
        if not isinstance(anns, list):
            raise ValueError(f"{where}: 'annotations' must be a list of {{'image_id', 'caption'}} objects")
        # Images in the file's image order when it lists them (the order COCOEvalCap scores them in).
        for img in data.get("images") or []:
            if isinstance(img, dict) and "id" in img and not isinstance(img["id"], (list, dict)):
                refs.setdefault(img["id"], [])
        for i, ann in enumerate(anns):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise ValueError(f"{where}: annotations[{i}] must be an object with 'image_id' and 'caption', "
                                 f"got {ann!r:.100}")
            if not isinstance(ann["caption"], str):
                raise ValueError(f"{where}: annotations[{i}]['caption'] must be a string, got {ann['caption']!r:.60}")
            refs.setdefault(_image_id(ann["image_id"], f"{where}: annotations[{i}]"), []).append(ann["caption"])
        refs = {k: v for k, v in refs.items() if v}
    elif isinstance(data.get("images"), list):
        images, splits = data["images"], collections.Counter()
        for i, img in enumerate(images):
            if not isinstance(img, dict) or not isinstance(img.get("sentences"), list):
                raise ValueError(f"{where}: images[{i}] must be an object with a 'sentences' list (Karpathy format)")
            splits[img.get("split")] += 1
            if split is not None and img.get("split") != split:
                continue
            id_key = next((k for k in ("cocoid", "imgid", "id") if k in img), None)
            if id_key is None:
                raise ValueError(f"{where}: images[{i}] has no 'cocoid', 'imgid' or 'id'")
            key = _image_id(img[id_key], f"{where}: images[{i}]")
            caps = []
            for j, sent in enumerate(img["sentences"]):
                if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
                    raise ValueError(f"{where}: images[{i}]['sentences'][{j}] must be an object with a 'raw' string")
                caps.append(sent["raw"])
            if key in refs:
                raise ValueError(f"{where}: image id {key!r} ({id_key}) appears twice")
            if caps:
                refs[key] = caps
        if split is not None and not refs:
            raise ValueError(f"{where} has no images with captions in split {split!r}; its splits are "
                             + ", ".join(f"{s!r} ({c} images)" for s, c in splits.items()))
    else:
        raise ValueError(f"{where} has neither an 'annotations' list (COCO captions format) nor an 'images' list "
                         "with 'sentences' (Karpathy split format)")
    if not refs:
        raise ValueError(f"{where} holds no captions")
    return refs


def load_results(path: str | os.PathLike) -> dict[Key, str]:
    """Candidate captions by image id from a COCO results file `[{"image_id": ..., "caption": ...}, ...]`."""
    data = _read_json(path, "results")
    where = f"results file {os.fspath(path)!r}"
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        raise ValueError(f"{where} looks like an annotations file; results are a JSON list "
                         "[{\"image_id\": ..., \"caption\": ...}, ...]")
    if not isinstance(data, list):
        raise ValueError(f"{where} must hold a JSON list [{{\"image_id\": ..., \"caption\": ...}}, ...], "
                         f"not a {type(data).__name__}")
    results: dict[Key, str] = {}
    for i, res in enumerate(data):
        if not isinstance(res, dict) or "image_id" not in res or "caption" not in res:
            raise ValueError(f"{where}: entry {i} must be an object with 'image_id' and 'caption', got {res!r:.100}")
        key = _image_id(res["image_id"], f"{where}: entry {i}")
        if not isinstance(res["caption"], str):
            raise ValueError(f"{where}: entry {i} (image {key!r}): 'caption' must be one string, "
                             f"got {res['caption']!r:.60}")
        if key in results:
            raise ValueError(f"{where}: image_id {key!r} appears more than once; COCO scores exactly one caption "
                             "per image, so keep one result per image")
        results[key] = res["caption"]
    if not results:
        raise ValueError(f"{where} holds no results")
    return results


def match_results(references: Mapping[Key, Sequence[str]], results: Mapping[Key, str]) -> dict[Key, list[str]]:
    """The references of the images in `results` (in the references' order), as COCOEvalCap scores only those;
    every result must be an annotated image."""
    unknown = [k for k in results if k not in references]
    if unknown:
        hint = ""
        alt = {str(k) for k in references}
        if any(str(k) in alt for k in unknown):
            hint = " (the ids differ only in type, integer vs string: write them as the annotations do)"
        shown = ", ".join(repr(k) for k in unknown[:10]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 10
                                                              else "")
        raise ValueError(f"{len(unknown)} result image id(s) are not in the annotations: {shown}{hint}. "
                         "Results must be captions of annotated images (check the annotations file and --split)")
    return {k: list(v) for k, v in references.items() if k in results}
