"""Build `cngpt_tf/data/rhyme_groups.json`: the 14 rhyme groups of 中华新韵 over U+4E00–U+9FFF.

Each character is placed by the final of its most common reading (pypinyin's default), with the
apical "-i" of zhi/chi/shi/ri/zi/ci/si (支) kept apart from the "i" of ji/qi/xi (齐).
Run once by a maintainer (`pip install pypinyin`); the JSON is shipped, so users need no pypinyin.

    python scripts/build_rhyme_table.py
"""

import json
from pathlib import Path

from pypinyin import Style, pinyin

# 中华新韵 (2005): group name -> the pinyin finals it holds (pypinyin strict spellings: ü is "v").
GROUPS = {
    "一麻": ["a", "ia", "ua"],
    "二波": ["o", "uo", "e"],
    "三皆": ["ie", "ve"],
    "四开": ["ai", "uai"],
    "五微": ["ei", "uei"],
    "六豪": ["ao", "iao"],
    "七尤": ["ou", "iou"],
    "八寒": ["an", "ian", "uan", "van"],
    "九文": ["en", "in", "uen", "vn"],
    "十唐": ["ang", "iang", "uang"],
    "十一庚": ["eng", "ing", "ueng", "ong", "iong"],
    "十二齐": ["i", "v"],
    "十三支": ["-i", "er"],
    "十四姑": ["u"],
}
APICAL_INITIALS = {"zh", "ch", "sh", "r", "z", "c", "s"}


def main() -> None:
    final_to_group = {f: g for g, finals in GROUPS.items() for f in finals}
    table = {g: [] for g in GROUPS}
    for cp in range(0x4E00, 0xA000):
        c = chr(cp)
        final = pinyin(c, style=Style.FINALS, strict=True)[0][0]
        initial = pinyin(c, style=Style.INITIALS, strict=True)[0][0]
        if final == "i" and initial in APICAL_INITIALS:
            final = "-i"
        group = final_to_group.get(final)
        if group and final != c:  # pypinyin returns the character itself when it has no reading
            table[group].append(c)
    out = Path(__file__).resolve().parents[1] / "cngpt_tf" / "data" / "rhyme_groups.json"
    out.write_text(json.dumps({g: "".join(cs) for g, cs in table.items()}, ensure_ascii=False, indent=0) + "\n",
                   encoding="utf-8")
    print(out, {g: len(cs) for g, cs in table.items()})


if __name__ == "__main__":
    main()
