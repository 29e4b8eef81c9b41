"""Resources/Training/PROTOCOLS.md says, for every setting of both training protocols, the
paper's value, its source, ours and why: the tables must be the code's."""

from pathlib import Path

import pytest

from ipmn_training import IPMNProtocol
from monet_protocol import MoNetProtocol
from trainkit.protocol import NOT_IN_THE_PAPER, protocol_markdown_rows, protocol_table

DOCUMENT = Path(__file__).resolve().parents[1] / "Resources" / "Training" / "PROTOCOLS.md"


@pytest.mark.parametrize("protocol_class", [MoNetProtocol, IPMNProtocol])
def test_every_setting_has_its_row_with_both_values_and_sources(protocol_class):
    text = DOCUMENT.read_text(encoding="utf-8")
    missing = [row for row in protocol_markdown_rows(protocol_class) if row not in text]
    assert not missing, "PROTOCOLS.md lacks or misstates these rows (print protocol_markdown_rows to refresh):\n" + \
        "\n".join(missing)


@pytest.mark.parametrize("protocol_class", [MoNetProtocol, IPMNProtocol])
def test_every_paper_value_that_differs_from_ours_names_its_source(protocol_class):
    unsourced = [row["setting"] for row in protocol_table(protocol_class)
                 if row["ours"] != row["paper"] and row["source"] == NOT_IN_THE_PAPER]
    assert not unsourced
