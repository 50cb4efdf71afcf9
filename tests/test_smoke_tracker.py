from recon.tracker import TaskStatus


def test_create_claim_complete(tracker):
    task = tracker.create_task("PROCESS_STAGING_ENTRY", {"staging_entry_id": "stg_1"})
    assert task.status == "PENDING" and task.attempts == 0
    claimed = tracker.claim_batch("PROCESS_STAGING_ENTRY", 10, 60, owner="w1")
    assert [t.task_id for t in claimed] == [task.task_id]
    assert claimed[0].attempts == 1
    assert tracker.complete([task.task_id], owner="w1") == 1
    assert tracker.get_task(task.task_id).status == TaskStatus.COMPLETED
