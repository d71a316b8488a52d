"""``smtpguard explain`` measured on a labelled corpus of real reply lines.

``tests/data/explain/corpus.tsv`` holds real replies of 17 server families, each with
its provenance, the expected category and the expected fix, split once by a hash of
the line into a part the rules were tuned on (``tune``) and a held-out part
(``heldout``; README.md there). ``heldout2.tsv`` was a second held-out sample; its
misses were read to improve the rules, so it is tuning data now (:data:`TUNING_SPLITS`)
and counts in the tuning figure, never in the held-out one. ``heldout3.tsv`` was a
third, blind sample: measured once at 113/161 = 70.2 % category, then its misses were
read, so it is tuning data now too. ``heldout4.tsv`` and ``heldout5.tsv`` were a fourth
and a fifth blind sample (80.5 % and 78.3 % at their single blind measurement); their
misses were read in the session after, so they are tuning data as well.
``heldout6.tsv`` was a sixth blind sample, committed before it was first measured
(81.5 %); its misses were read next, so it is tuning data too. ``heldout7.tsv`` was a
seventh blind sample, measured once at 72.6 %; its misses were read in round 6, so it
is tuning data now. ``heldout8.tsv`` was an eighth blind sample, measured once at
83.4 %; its misses were read in round 7, so it is tuning data now. ``heldout9.tsv`` was
a ninth blind sample, measured once at 83.9 %; its misses were read in round 8, so it
is tuning data now. ``heldout10.tsv`` was a tenth blind sample: 75.6 % at its first
measurement (after round 8), 79.1 % at its second (with the word model, a method
change chosen by a backtest on the past blind samples without looking at it; no rule or
label changed) and 79.1 % again at its third (with the model's second opinion on weak
words, chosen the same way); its misses were read in round 9, so it is tuning data now
(and trains the word model). ``heldout11.tsv`` was an eleventh blind sample, measured
once at 74.0 % after round 9; its misses were read in round 10, so it is tuning data
now (and trains the word model). ``heldout12.tsv`` was a twelfth blind sample, measured
once at 65.6 % after round 10; its misses were read in round 11, so it is tuning data
now (and trains the word model). ``heldout13.tsv`` was a thirteenth blind sample,
measured once at 70.3 % after round 11; its misses were read in round 12, so it is
tuning data now (and trains the word model). ``heldout14.tsv`` was a fourteenth blind
sample, measured once at 67.3 % after round 12; its misses were read in round 13, so it
is tuning data now (and trains the word model). ``heldout15.tsv`` was a fifteenth blind
sample, measured once at 76.3 % after round 13; its misses were read in round 14, so it
is tuning data now (and trains the word model). ``heldout16.tsv`` was a sixteenth blind
sample, measured once at 58.7 % after round 14; its misses were read in round 15, so it
is tuning data now (and trains the word model). ``heldout17.tsv`` is a seventeenth
blind sample (77.4 % at its single measurement, after round 15), held out. The held-out
figure, on which the issue's 90 % target is judged, is the ``heldout`` split together
with every blind sample whose misses were never read; a blind sample joins it by adding
its file to :data:`FILES` and its split to :data:`HELDOUT_SPLITS`. ``natural1.tsv`` is
a blind sample of another kind: replies as often as real logs show them, texts already
in the files included, measured as a part of its own (:data:`NATURAL_SPLITS`). Run this
file to print the table::

    .venv/bin/python tests/test_explain_corpus.py [--misses tune|heldout2|...|tuning]

``--misses`` lists the misses of tuning data only: a held-out split refuses.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpguard.explain import FIXES, Knowledge, knowledge

DATA = Path(__file__).parent / "data" / "explain"
CORPUS = DATA / "corpus.tsv"
#: Every labelled file with the splits its lines may name, in report order.
FILES: tuple[tuple[Path, tuple[str, ...]], ...] = (
    (CORPUS, ("tune", "heldout")),
    (DATA / "heldout2.tsv", ("heldout2",)),
    (DATA / "heldout3.tsv", ("heldout3",)),
    (DATA / "heldout4.tsv", ("heldout4",)),
    (DATA / "heldout5.tsv", ("heldout5",)),
    (DATA / "heldout6.tsv", ("heldout6",)),
    (DATA / "heldout7.tsv", ("heldout7",)),
    (DATA / "heldout8.tsv", ("heldout8",)),
    (DATA / "heldout9.tsv", ("heldout9",)),
    (DATA / "heldout10.tsv", ("heldout10",)),
    (DATA / "heldout11.tsv", ("heldout11",)),
    (DATA / "heldout12.tsv", ("heldout12",)),
    (DATA / "heldout13.tsv", ("heldout13",)),
    (DATA / "heldout14.tsv", ("heldout14",)),
    (DATA / "heldout15.tsv", ("heldout15",)),
    (DATA / "heldout16.tsv", ("heldout16",)),
    (DATA / "heldout17.tsv", ("heldout17",)),
    (DATA / "natural1.tsv", ("natural1",)),
    (DATA / "natural2.tsv", ("natural2",)),
    (DATA / "natural3.tsv", ("natural3",)),
    (DATA / "natural4.tsv", ("natural4",)),
    (DATA / "natural5.tsv", ("natural5",)),
    (DATA / "natural6.tsv", ("natural6",)),
    (DATA / "natural7.tsv", ("natural7",)),
    (DATA / "natural8.tsv", ("natural8",)),
    (DATA / "natural9.tsv", ("natural9",)),
    (DATA / "natural10.tsv", ("natural10",)),
    (DATA / "natural11.tsv", ("natural11",)),
    (DATA / "vendors1.tsv", ("vendors1",)),
    (DATA / "vendors2.tsv", ("vendors2",)),
)
#: Splits whose misses were read while changing the rules.
TUNING_SPLITS = (
    "tune",
    "heldout2",
    "heldout3",
    "heldout4",
    "heldout5",
    "heldout6",
    "heldout7",
    "heldout8",
    "heldout9",
    "heldout10",
    "heldout11",
    "heldout12",
    "heldout13",
    "heldout14",
    "heldout15",
    "heldout16",
    "natural2",
    "natural3",
    "natural5",
    "vendors1",
    "natural6",
    "vendors2",
    "natural7",
    "natural9",
)
#: Splits measured as totals only: their misses are never printed (see main).
HELDOUT_SPLITS = ("heldout", "heldout17")
#: Samples at the frequency real logs show replies (README.md there): measured on their
#: own, never in the held-out figure (their texts may repeat the files' and each
#: other), and never read either.
NATURAL_SPLITS = ("natural1", "natural4", "natural8", "natural10", "natural11")
#: Natural samples labelled a second time (the agreement study, bench/explain_agreement.py).
SECOND_LABELLED = ("natural1", "natural4", "natural7", "natural8", "natural10", "natural11")
#: Samples at that frequency, whose texts may repeat (natural2 is tuning data now).
NATURAL_FREQUENCY = (
    "natural1",
    "natural2",
    "natural3",
    "natural4",
    "natural5",
    "natural6",
    "natural7",
    "natural8",
    "natural9",
    "natural10",
    "natural11",
)
#: Splits whose texts a failing test must not print.
UNREAD_SPLITS = HELDOUT_SPLITS + NATURAL_SPLITS
SPLITS = TUNING_SPLITS + HELDOUT_SPLITS + NATURAL_SPLITS
#: The two figures: all tuning data, and all held-out data (the issue's target).
TUNING = "tuning"
HELDOUT_ALL = "heldout_all"
PARTS = (*SPLITS, TUNING, HELDOUT_ALL)
FAMILIES = (
    "postfix",
    "sendmail",
    "exim",
    "qmail",
    "haraka",
    "opensmtpd",
    "james",
    "exchange",
    "gmail",
    "yahoo",
    "qq",
    "netease",
    "coremail",
    "sina",
    "aliyun",
    "zoho",
    "mimecast",
    # natural1's servers outside the 17 (and hosts its posts do not name).
    "other",
)
#: Accuracy floors: what was measured, rounded down, to catch regressions. The
#: issue's target is 0.90 category accuracy on held-out data. When the rules were
#: frozen before heldout2.tsv was read, the ``heldout`` split measured 132/147 = 0.898
#: and heldout2 (then held out) 82/110 = 0.745. After the rules were generalized from
#: the servers' sources and vendor lists (heldout2 now tuning data): tuning 490/491 =
#: 0.998, ``heldout`` 135/147 = 0.918 (measured as totals only). heldout3.tsv, blind,
#: measured 113/161 = 0.702 once (tuning then 603/652 = 0.925 with it). After the rules
#: were generalized by class from sources (sisimai's Reason/Rhost/Lhost lists, the
#: servers' delivery texts, vendor pages): tuning 651/652 = 0.998, ``heldout``
#: 136/147 = 0.925. Then heldout4.tsv, blind, measured once: 132/164 = 0.805. A
#: third round of rules, written from a development set of the rules' author's own
#: (no held-out line read), then heldout5.tsv, blind, measured once: 94/120 = 0.783;
#: with those rules ``heldout`` 138/147 = 0.939 and heldout4 136/164 = 0.829; held out
#: in all 368/431 = 0.854, below the target. heldout4 and heldout5 then became tuning
#: data (their misses read): tuning 881/936 = 0.941 before any rule changed.
#: After their miss classes were generalized: tuning 933/936 = 0.997, held out 139/147 = 0.946.
#: Then heldout6.tsv, blind, measured once with those rules: 137/168 = 0.815; held out
#: in all (``heldout`` and heldout6) 276/315 = 0.876, below the target. heldout6 then
#: became tuning data (its misses read): tuning 1070/1104 = 0.969 before any rule changed.
#: After its miss classes were generalized: tuning 1100/1104 = 0.996, held out 139/147 = 0.946.
#: heldout7.tsv, blind, measured once with those rules: 106/146 = 0.726; held out in
#: all (``heldout`` and heldout7) 245/293 = 0.836, below the target. heldout7 then
#: became tuning data (its misses read in round 6); held out is the ``heldout`` split
#: alone again (139/147 = 0.946) until a new blind sample joins it. Tuning with
#: heldout7, before any rule changed: 1206/1250 = 0.965. After its miss classes were
#: generalized from the add-ons' sources (round 6): tuning 1242/1250 = 0.994 (heldout7
#: 142/146), held out 139/147 = 0.946. heldout8.tsv, blind (committed in ac2b077 before
#: any measurement), measured once with those rules: 126/151 = 0.834; held out in all
#: (``heldout`` and heldout8) 265/298 = 0.889, below the target. heldout8 then became
#: tuning data (its misses read in round 7); held out is the ``heldout`` split alone
#: again: 139/147 = 0.946 before round 7. Tuning with heldout8, before any rule
#: changed: 1368/1401 = 0.976; after its miss classes were generalized from the
#: components' sources (round 7): 1391/1401 = 0.993 (heldout8 149/151), ``heldout``
#: 139/147. heldout9.tsv, blind (committed in 682bfb5 before any measurement), measured
#: once with those rules: 99/118 = 0.839; held out in all (``heldout`` and heldout9)
#: 238/265 = 0.898, below the target. heldout9 then became tuning data (its misses
#: read in round 8); held out is the ``heldout`` split alone again, whose last measured
#: figure (139/147 = 0.946, before round 8) the floor keeps.
#: heldout10.tsv, blind (committed in 74f6dea before any measurement), measured once
#: after round 8: 65/86 = 0.756; held out in all (``heldout`` and heldout10) 204/233 =
#: 0.876, below the target. Then the word model (f2b2ddc: naive Bayes before the RFC 3463
#: fallback, chosen by a backtest on heldout2..9 with the rules of their blind
#: measurements, bench/explain_backtest.py, without looking at heldout10; no rule or label
#: changed), measured once: heldout10 68/86 = 0.791 (its second measurement), ``heldout``
#: 139/147; held out in all 207/233 = 0.888, still below the target; tuning 1506/1519 =
#: 0.991 (one heldout4 line the fallback had right, the model gets wrong). Then the
#: model's second opinion on weak words (c7f689a: a ``keywords`` answer gives way to the
#: model's other category at a posterior >= 0.95; chosen by the same backtest, without
#: looking at any held-out line), measured once: unchanged, heldout10 68/86 = 0.791 (its
#: third measurement), ``heldout`` 139/147; held out in all 207/233 = 0.888; tuning
#: 1507/1519 = 0.992 (a heldout5 QQ line right now). heldout10 then became tuning data
#: (its misses read in round 9); held out is the ``heldout`` split alone again, whose
#: last measured figure (139/147 = 0.946, before round 9) the floor keeps. Tuning with
#: heldout10, before any rule or the word model changed: 1575/1605 = 0.981; with the word
#: model regenerated from the tuning data with heldout10: 1585/1605 = 0.988 (heldout10
#: 78/86, lines it was trained on). After its miss classes were generalized from the
#: components' sources (round 9): tuning 1592/1605 = 0.992 (heldout10 85/86).
#: heldout11.tsv, blind (committed in 91fb009 before any measurement), measured once
#: after round 9: 74/100 = 0.740; held out in all (``heldout`` 139/147 and heldout11)
#: 213/247 = 0.862, below the target. heldout11 then became tuning data (its misses read
#: in round 10); held out is the ``heldout`` split alone again, whose last measured figure
#: (139/147 = 0.946, before round 10) the floor keeps until the lead adds the next blind
#: sample. Tuning with heldout11, before any rule or the word model changed: 1666/1705 =
#: 0.977; with the word model regenerated from the tuning data with heldout11: 1678/1705
#: = 0.984 (heldout11 87/100, lines it was trained on). After its miss classes were
#: generalized from the components' sources (round 10): tuning 1691/1705 = 0.992 (heldout11
#: 99/100; 93/100 with the new rules and the model that never saw heldout11). Held out is
#: the ``heldout`` split alone (139/147 = 0.946, unchanged by round 10).
#: heldout12.tsv, blind (committed in 2691c30..091b336 before any measurement), measured
#: once after round 10: 61/93 = 0.656; held out in all (``heldout`` 139/147 and
#: heldout12) 200/240 = 0.833, below the target. heldout12 then became tuning data (its
#: misses read in round 11); held out is the ``heldout`` split alone again, whose last
#: measured figure (139/147 = 0.946, before round 11) the floor keeps until the lead adds
#: the next blind sample. Tuning with heldout12, before any rule or the word model
#: changed: 1752/1798 = 0.974; with the word model regenerated from the tuning data with
#: heldout12: 1765/1798 = 0.982 (heldout12 75/93, lines it was trained on). After its
#: miss classes were generalized from the components' sources (round 11): tuning
#: 1782/1798 = 0.991 (heldout12 90/93; 86/93 with the new rules and the model that never
#: saw heldout12). Held out is the ``heldout`` split alone (139/147 = 0.946, unchanged by
#: round 11). heldout13.tsv, blind (committed in bff6127..680f794 before any
#: measurement), measured once after round 11: 52/74 = 0.703; held out in all
#: (``heldout`` 139/147 and heldout13) 191/221 = 0.864, below the target. heldout13
#: then became tuning data (its misses read in round 12); held out is the ``heldout``
#: split alone again, whose last measured figure (139/147 = 0.946, before round 12) the
#: floor keeps until the lead adds the next blind sample. Tuning with heldout13, before
#: any rule or the word model changed: 1834/1872 = 0.980; with the word model
#: regenerated from the tuning data with heldout13: 1841/1872 = 0.983 (heldout13 60/74,
#: lines it was trained on). After its miss classes were generalized from the
#: components' sources (round 12): tuning 1854/1872 = 0.990 (heldout13 71/74; 69/74 with
#: the new rules and the model that never saw heldout13). Held out is the ``heldout``
#: split alone (139/147 = 0.946, unchanged by round 12). heldout14.tsv, blind (committed
#: in 0d9f92a before any measurement), measured once after round 12: 70/104 = 0.673;
#: held out in all (``heldout`` 139/147 and heldout14) 209/251 = 0.833, below the target.
#: heldout14 then became tuning data (its misses read in round 13); held out is the
#: ``heldout`` split alone again, whose last measured figure (139/147 = 0.946, before
#: round 13) the floor keeps until the lead adds the next blind sample. Tuning with
#: heldout14, before any rule or the word model changed: 1924/1976 = 0.974; with the word
#: model regenerated from the tuning data with heldout14: 1932/1976 = 0.978 (heldout14
#: 79/104, lines it was trained on). After its miss classes were generalized from the
#: components' sources (round 13): tuning 1957/1976 = 0.990 (heldout14 103/104; 103/104
#: with the new rules and the model that never saw heldout14). Held out is the
#: ``heldout`` split alone (139/147 = 0.946, unchanged by round 13). heldout15.tsv, blind
#: (committed in ccb5da5 before any measurement), measured once after round 13: 106/139
#: = 0.763; held out in all (``heldout`` 139/147 and heldout15) 245/286 = 0.857, below
#: the target. heldout15 then became tuning data (its misses read in round 14); held out
#: is the ``heldout`` split alone again, whose last measured figure (139/147 = 0.946,
#: before round 14) the floor keeps until the lead adds the next blind sample. Tuning
#: with heldout15, before any rule or the word model changed: 2063/2115 = 0.975; with the
#: word model regenerated from the tuning data with heldout15: 2077/2115 = 0.982
#: (heldout15 120/139, lines it was trained on). After its miss classes were generalized
#: from the components' sources (round 14): tuning 2095/2115 = 0.991 (heldout15 138/139;
#: 137/139 with the new rules and the model that never saw heldout15). Held out is the
#: ``heldout`` split alone (139/147 = 0.946, unchanged by round 14). heldout16.tsv, blind
#: (committed in 8607f46 before any measurement), measured once after round 14: 44/75 =
#: 0.587; held out in all (``heldout`` 139/147 and heldout16) 183/222 = 0.824, below the
#: target. heldout16 then became tuning data (its misses read in round 15); held out is
#: the ``heldout`` split alone again, whose last measured figure (139/147 = 0.946, before
#: round 15) the floor keeps until the lead adds the next blind sample. Tuning with
#: heldout16, before any rule or the word model changed: 2139/2190 = 0.977; with the word
#: model regenerated from the tuning data with heldout16: 2151/2190 = 0.982 (heldout16
#: 56/75, lines it was trained on). After its miss classes were generalized from the
#: components' sources (round 15): tuning 2169/2190 = 0.990 (heldout16 72/75; 72/75 with
#: the new rules and the model that never saw heldout16). Held out is the ``heldout``
#: split alone (139/147 = 0.946, unchanged by round 15). heldout17.tsv, blind (committed
#: in a8d2640 before any measurement; 31 lines), measured once after round 15: 24/31 =
#: 0.774; held out in all (``heldout`` 139/147 and heldout17) 163/178 = 0.916.
#: natural1.tsv, blind (committed in b46b614 before any measurement; 204 lines at the
#: frequency public logs show them), measured once after round 15: 168/204 = 0.824;
#: after round 16 (tuned on natural2 only; natural1's total also seen once mid-round,
#: 175/204, nothing changed for it): 179/204 = 0.877. natural3 (187 lines), blind, once
#: after round 16: 160/187 = 0.856; tuning data of round 17, after which natural1
#: 178/204 = 0.873 and tuning 2545/2583 = 0.985.
#: natural2 (206 lines, natural frequency), blind, once: 171/206 = 0.830; then tuning data:
#: after round 16 (its classes from sources, the word model regenerated with it) tuning
#: 2365/2396 = 0.987 (natural2 195/206; most of the rest are labels that disagree).
#: natural4.tsv (103 lines, generic queries), blind, once after round 17: 87/103 = 0.845
#: (fix the same); kept blind beside natural1.
#: natural5 (132 lines, self-hosted suites), blind, once after round 17: 104/132 = 0.788;
#: tuning data of round 18, after which natural1 177/204 = 0.868, natural4 87/103,
#: held out in all 164/178 = 0.921, tuning 2664/2715 = 0.981.
#: vendors1 (123 lines, the vendors' own code tables, tuning data from the start),
#: round 19: tuning 2790/2838 = 0.983; held out in all 164/178, natural1 177/204 and
#: natural4 87/103, unchanged (measured once, at the end of the round).
#: natural6 (276 lines, provider and filter queries; 239 from vendor lists), blind,
#: measured once with round 18's rules (a8092b4): 228/276 = 0.826, and once with round
#: 19's: 235/276 = 0.851 (fix 237); tuning data of round 20: with the word model
#: regenerated with it, before any rule changed, tuning 3035/3114 = 0.975 (natural6
#: 244/276); after its classes were written, tuning 3061/3114 = 0.983 (natural6 269/276),
#: held out in all 164/178 = 0.921, natural1 178/204 = 0.873, natural4 89/103 = 0.864
#: (measured once, at the end of the round).
#: natural7 (119 lines, real-log queries; 59 from posted logs and bounces), blind
#: (committed in 4a60ad5 before any measurement), measured once with the rules of
#: rounds 18, 19 and 20 (914f4d9, 5590cd7, 2df40db): 108/119 = 0.908 each time (fix
#: 109); kept blind beside natural1 and natural4. natural8 (90 lines, natural1-style log
#: and bounce queries; 35 from posted logs), blind (committed in c8d5ebc before any
#: measurement), measured once with round 18's rules (914f4d9): 82/90 = 0.911 (fix 83),
#: and once with round 21's after review rev103 (26a2944): 84/90 = 0.933 (fix 85).
#: vendors2 (86 lines, 26 more vendors' tables, tuning data from the start; round 20's
#: rules 63/86), round 21, with three label conflicts settled (Mail.ru's disabled sending
#: auth_failed, La Poste's LPN..._510 dnsbl, a bare "Access denied" rejected): tuning
#: 3151/3200 = 0.985 (the earlier 3114 lines 3061 -> 3065); held out in all 164/178 =
#: 0.921, natural1 176/204 = 0.863 (178 after round 20), natural4 89/103 = 0.864,
#: natural7 108/119 = 0.908 (measured once, at the end of the round). Round 22 read
#: natural7 (tuning data now, 118/119 after): tuning 3270/3319 = 0.985, held out in all
#: 164/178; natural1 176/204, natural4 90/103 = 0.874, natural8 84/90 (measured once, at
#: the end of the round); after review rev104's fixes, once: natural1 176/204, natural4
#: 89/103, natural8 84/90. natural9 (144 lines, natural1-style queries; 39 from posted
#: logs), blind (committed in 71cb562 before any measurement), measured once with round
#: 21's rules after rev103 (b93b42a), once with round 22's (6b99c84) and once after
#: rev104: 127/144 = 0.882 (fix 129) each time. Round 23 read natural9 (tuning data now;
#: its seven lines of smtpguard's own table take their triggers' categories): tuning
#: 3409/3463 = 0.984, held out in all 164/178; natural1 176/204, natural4 89/103,
#: natural8 84/90 (measured once, at the end of the round). natural10 (77 lines, 20 new
#: log, bounce and client queries; 26 from posted logs), blind (committed in 3ef3e51
#: before any measurement), measured once with round 22's rules after rev104 (42cf448)
#: and once with round 23's (0e59bab): 67/77 = 0.870 (fix 67) both times. natural11 (31
#: lines, 20 more new queries; 17 from posted logs), blind (committed in 6ef1c9b before
#: any measurement), measured once with round 23's rules: 27/31 = 0.871 (fix 27).
MIN_CATEGORY = {
    TUNING: 0.98,
    HELDOUT_ALL: 0.91,
    "natural1": 0.86,
    "natural4": 0.84,
    "natural8": 0.92,
    "natural10": 0.87,
    "natural11": 0.87,
}
#: The fix follows from the category (several categories share one), so it is at
#: least as accurate: tuning 651/652 = 0.998; held out 381/431 = 0.884 (``heldout``
#: 141/147, heldout4 142/164, heldout5 98/120). With heldout4 and heldout5 as tuning
#: data, before any rule changed: tuning 891/936 = 0.952, held out 141/147 = 0.959.
#: After their miss classes were generalized: tuning 934/936 = 0.998, held out 141/147 = 0.959.
#: heldout6, blind, once: 147/168 = 0.875; held out in all 288/315 = 0.914. With
#: heldout6 as tuning data, before any rule changed: tuning 1081/1104 = 0.979.
#: After its miss classes were generalized: tuning 1101/1104 = 0.997, held out 141/147 = 0.959.
#: heldout7, blind, once: 112/146 = 0.767; held out in all 253/293 = 0.863. With
#: heldout7 as tuning data, held out is the ``heldout`` split alone: 141/147 = 0.959.
#: Round 6: tuning 1213/1250 = 0.970 before, 1245/1250 = 0.996 after; held out 141/147.
#: heldout8, blind, once: 131/151 = 0.868; held out in all 272/298 = 0.913. With
#: heldout8 as tuning data (round 7), held out is the ``heldout`` split alone: 141/147
#: before round 7. Round 7: tuning 1376/1401 = 0.982 before, 1394/1401 = 0.995 after.
#: heldout9, blind, once: 101/118 = 0.856; held out in all 242/265 = 0.913. With
#: heldout9 as tuning data (round 8), held out is the ``heldout`` split alone: 141/147.
#: heldout10, blind, once: 71/86 = 0.826; held out in all 212/233 = 0.910. With the word
#: model (f2b2ddc), once: heldout10 74/86 = 0.860, ``heldout`` 141/147; held out in all
#: 215/233 = 0.923; tuning 1509/1519 = 0.993. With its second opinion on weak words
#: (c7f689a), once: unchanged, heldout10 74/86, ``heldout`` 141/147, held out in all
#: 215/233 = 0.923; tuning 1509/1519. The floor stays at 0.90, the issue's target.
#: With heldout10 as tuning data (round 9), held out is the ``heldout`` split alone:
#: 141/147; tuning 1583/1605 = 0.986 before round 9, 1590/1605 = 0.991 with the word model
#: regenerated (heldout10 81/86). Round 9: tuning 1595/1605 = 0.994 after (heldout10 86/86).
#: heldout11, blind, once: 78/100 = 0.780; held out in all 219/247 = 0.887. With
#: heldout11 as tuning data (round 10), held out is the ``heldout`` split alone: 141/147;
#: tuning 1673/1705 = 0.981 before round 10, 1683/1705 = 0.987 with the word model
#: regenerated (heldout11 89/100). Round 10: tuning 1694/1705 = 0.994 after (heldout11
#: 99/100); held out 141/147. heldout12, blind, once: 65/93 = 0.699; held out in all
#: 206/240 = 0.858. With heldout12 as tuning data (round 11), held out is the ``heldout``
#: split alone: 141/147; tuning 1759/1798 = 0.978 before round 11, 1773/1798 = 0.986 with
#: the word model regenerated (heldout12 79/93). Round 11: tuning 1787/1798 = 0.994 after
#: (heldout12 92/93); held out 141/147. heldout13, blind, once: 54/74 = 0.730; held out
#: in all 195/221 = 0.882. With heldout13 as tuning data (round 12), held out is the
#: ``heldout`` split alone: 141/147; tuning 1841/1872 = 0.983 before round 12, 1848/1872
#: = 0.987 with the word model regenerated (heldout13 62/74). Round 12: tuning 1859/1872
#: = 0.993 after (heldout13 71/74); held out 141/147. heldout14, blind, once: 76/104 =
#: 0.731; held out in all 217/251 = 0.865. With heldout14 as tuning data (round 13),
#: held out is the ``heldout`` split alone: 141/147; tuning 1935/1976 = 0.979 before
#: round 13, 1940/1976 = 0.982 with the word model regenerated (heldout14 82/104).
#: Round 13: tuning 1962/1976 = 0.993 after (heldout14 103/104); held out 141/147.
#: heldout15, blind, once: 111/139 = 0.799; held out in all 252/286 = 0.881. With
#: heldout15 as tuning data (round 14), held out is the ``heldout`` split alone: 141/147;
#: tuning 2073/2115 = 0.980 before round 14, 2086/2115 = 0.986 with the word model
#: regenerated (heldout15 124/139). Round 14: tuning 2100/2115 = 0.993 after (heldout15
#: 138/139); held out 141/147. heldout16, blind, once: 48/75 = 0.640; held out in all
#: 189/222 = 0.851. With heldout16 as tuning data (round 15), held out is the ``heldout``
#: split alone: 141/147; tuning 2148/2190 = 0.981 before round 15, 2159/2190 = 0.986 with
#: the word model regenerated (heldout16 59/75). Round 15: tuning 2174/2190 = 0.993 after
#: (heldout16 73/75); held out 141/147. heldout17, blind, once: 24/31 = 0.774; held out
#: in all 165/178 = 0.927. natural1, blind, once: 173/204 = 0.848; after round 16:
#: 184/204 = 0.902. Tuning after round 16: 2374/2396 = 0.991. After round 17: natural1
#: 183/204 = 0.897; tuning 2556/2583 = 0.990.
MIN_FIX = {
    TUNING: 0.98,
    HELDOUT_ALL: 0.92,
    "natural1": 0.89,
    "natural4": 0.84,
    "natural8": 0.93,
    "natural10": 0.87,
    "natural11": 0.87,
}


@dataclass(frozen=True, slots=True)
class Case:
    family: str
    split: str
    category: str
    fix: str
    reply: str
    provenance: str


def load_file(path: Path, splits: tuple[str, ...]) -> list[Case]:
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 6:
            raise ValueError(f"{path}:{number}: expected 6 tab-separated fields")
        if fields[1] not in splits:
            raise ValueError(f"{path}:{number}: split must be one of {splits}")
        cases.append(Case(*fields))
    return cases


def load_corpus() -> list[Case]:
    """Every line of :data:`FILES`, tuning and held-out alike."""
    return [case for path, splits in FILES for case in load_file(path, splits)]


@dataclass(frozen=True, slots=True)
class Score:
    total: int
    category: int
    fix: int


def score(know: Knowledge, cases: list[Case]) -> dict[tuple[str, str], Score]:
    """(family or "all", part) -> counts of lines and of right categories and fixes."""
    total: Counter[tuple[str, str]] = Counter()
    right: Counter[tuple[str, str]] = Counter()
    fixed: Counter[tuple[str, str]] = Counter()
    for case in cases:
        exp = know.explain(case.reply)
        parts: tuple[str, ...] = (case.split,)
        if case.split in TUNING_SPLITS:
            parts += (TUNING,)
        elif case.split in HELDOUT_SPLITS:
            parts += (HELDOUT_ALL,)
        for key in ((family, part) for family in (case.family, "all") for part in parts):
            total[key] += 1
            right[key] += exp.category == case.category
            fixed[key] += exp.fix == case.fix
    return {key: Score(total[key], right[key], fixed[key]) for key in total}


def report(know: Knowledge, cases: list[Case]) -> str:
    """The per-family accuracy table (category, and fix) of every part, as Markdown."""
    scores = score(know, cases)
    names = [f"{split} (tuning)" for split in TUNING_SPLITS]
    names += [f"{split} (held out)" for split in HELDOUT_SPLITS]
    names += [f"{split} (natural)" for split in NATURAL_SPLITS]
    names += ["tuning all", "held-out all"]
    lines = [
        "| family | " + " | ".join(f"{n} n | {n} category | {n} fix" for n in names) + " |",
        "|---|" + "---:|" * 3 * len(names),
    ]
    for family in (*FAMILIES, "all"):
        cells = [family]
        for part in PARTS:
            s = scores.get((family, part), Score(0, 0, 0))
            if s.total:
                cells += [str(s.total), f"{s.category / s.total:.1%}", f"{s.fix / s.total:.1%}"]
            else:
                cells += ["0", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return load_corpus()


def test_corpus_is_well_formed(cases: list[Case]) -> None:
    know = knowledge()
    assert len(cases) >= 400
    assert {c.family for c in cases} == set(FAMILIES)
    assert {c.split for c in cases} == set(SPLITS)
    samples = [c for c in cases if c.split not in NATURAL_FREQUENCY]
    assert len({c.reply for c in samples}) == len(samples), "duplicate reply lines"
    for case in cases:
        assert case.category in know.categories, case
        assert case.fix in FIXES, case
        assert case.provenance.strip(), case


@pytest.mark.parametrize("split", SECOND_LABELLED)
def test_second_labels_are_well_formed(cases: list[Case], split: str) -> None:
    """The agreement study's second labels (bench/explain_agreement.py) name a line of
    the sample each, in order, and categories that exist."""
    know = knowledge()
    lines = [c for c in cases if c.split == split]
    rows = [
        row.split("\t")
        for row in (DATA / f"{split}-second.tsv").read_text(encoding="utf-8").splitlines()
        if row and not row.startswith("#")
    ]
    assert [int(row[0]) for row in rows] == list(range(1, len(lines) + 1))
    for row in rows:
        assert len(row) == 4, row
        assert row[1] in know.categories, row
        assert row[2] == "-" or row[2] in know.categories, row


@pytest.mark.parametrize("part", MIN_CATEGORY)
def test_category_accuracy(cases: list[Case], part: str) -> None:
    s = score(knowledge(), cases)[("all", part)]
    assert s.category / s.total >= MIN_CATEGORY[part], report(knowledge(), cases)


@pytest.mark.parametrize("part", MIN_CATEGORY)
def test_fix_accuracy(cases: list[Case], part: str) -> None:
    s = score(knowledge(), cases)[("all", part)]
    assert s.fix / s.total >= MIN_FIX[part], report(knowledge(), cases)


def main(argv: list[str]) -> int:
    cases = load_corpus()
    know = knowledge()
    if len(argv) == 2 and argv[0] == "--misses":
        wanted = TUNING_SPLITS if argv[1] == TUNING else (argv[1],)
        if not set(wanted) <= set(TUNING_SPLITS):
            # Reading a held-out line's miss would make it tuning data.
            print(f"--misses takes {', '.join((*TUNING_SPLITS, TUNING))}", file=sys.stderr)
            return 2
        # The misses alone: whoever tunes the rules does not see the held-out and
        # natural figures move with each change (the table without --misses does).
        for case in cases:
            exp = know.explain(case.reply)
            if case.split in wanted and exp.category != case.category:
                print(f"{case.family}\t{case.category}\t{exp.category}\t{exp.rule}\t{case.reply}")
        return 0
    print(report(know, cases))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
