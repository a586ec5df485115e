"""The quality trains and the relay echo on pion/turn: tests/test_train.py's test, run against
the session's pion server instead of its coturn (delegated, not copied).

If test_train.py takes the parametrised ``turn_server`` fixture itself, this module can go."""

from __future__ import annotations

from lkice.lab.pki import LabPki
from tests import test_train
from tests.conftest import TurnLab


async def test_every_path_gets_a_quality_train_on_pion(pion: TurnLab, pki: LabPki) -> None:
    """Binding trains on every transport, and data echoed through a second pion allocation
    (CreatePermission, Send and Data indications) with the release afterwards."""
    await test_train.test_every_path_gets_a_quality_train(pion, pki)
