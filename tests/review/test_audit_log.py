"""The audit log: append-only in the database, and a hash chain that names the first row an
edit around the trigger broke."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import sqlalchemy.exc

from recon import review


@pytest.fixture
def three_decisions(books):
    ids = []
    for n in range(3):
        sid, _ = books.stage(books.clearing, "CREDIT", f"1{n}.00", "CONFIRMATION", order_id=f"stray-{n}")
        ids.append(sid)
    books.process()
    for sid in ids:
        review.act(books.db, "ignore", sid, reason="NOT_OURS", note=f"not ours {sid}", actor="auditor")
    assert review.verify(books.db) == review.ChainReport(3)
    return ids


@pytest.mark.parametrize("statement", [
    "UPDATE review_decisions SET note = 'edited' WHERE seq = 2",
    "DELETE FROM review_decisions WHERE seq = 3",
    "TRUNCATE review_decisions",
])
def test_the_database_refuses_update_delete_and_truncate(books, three_decisions, statement):
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="review_decisions is append-only"):
        with books.db.begin() as conn:
            conn.execute(sa.text(statement))
    assert books.decision_count() == 3 and review.verify(books.db).ok


def _around_the_trigger(books, statement: str) -> None:
    """What only the table's owner can do: switch the triggers off, edit, switch them on again."""
    with books.db.begin() as conn:
        conn.execute(sa.text("ALTER TABLE review_decisions DISABLE TRIGGER USER"))
        conn.execute(sa.text(statement))
        conn.execute(sa.text("ALTER TABLE review_decisions ENABLE TRIGGER USER"))


def test_an_edited_row_is_named(books, three_decisions):
    _around_the_trigger(books, "UPDATE review_decisions SET note = 'nothing to see' WHERE seq = 2")
    result = review.verify(books.db)
    assert (result.ok, result.first_broken_seq) == (False, 2)
    assert result.problem == "row 2 was altered: its content no longer matches its hash"


def test_an_edit_that_recomputes_its_own_hash_breaks_the_next_row(books, three_decisions):
    with books.db.begin() as conn:
        (row,) = review.decisions(conn, three_decisions[1])
    forged = review.Decision(**{**vars(row), "actor": "someone else"})
    _around_the_trigger(books, f"UPDATE review_decisions SET actor = 'someone else',"
                               f" row_hash = '{review.content_hash(forged)}' WHERE seq = 2")
    result = review.verify(books.db)
    assert result.first_broken_seq == 3 and "does not follow the row before it" in result.problem


def test_a_removed_row_is_named(books, three_decisions):
    _around_the_trigger(books, "DELETE FROM review_decisions WHERE seq = 2")
    result = review.verify(books.db)
    assert result.first_broken_seq == 3 and result.problem == "row 3 follows row 1: a row is missing"


def test_an_empty_log_verifies(books):
    assert review.verify(books.db) == review.ChainReport(0)
