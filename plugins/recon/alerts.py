"""Who is told when a DAG run fails or runs late: the notifiers and the deadline of both DAGs.

Mail goes through Airflow's SMTP provider (``SmtpNotifier``) and the SMTP connection named by
RECON_ALERT_SMTP_CONN_ID, to RECON_ALERT_EMAIL; with no recipients there are no notifiers, so a
developer's machine sends nothing. DAG-level failure callbacks run in the dag-processor, deadline
callbacks in the triggerer: both need these settings in their environment.
"""

from __future__ import annotations

from datetime import timedelta

from recon import settings

FAILURE_SUBJECT = "[recon] {{ dag.dag_id }} run {{ run_id }} failed: {{ reason }}"
FAILURE_BODY = (
    "<p>DAG <b>{{ dag.dag_id }}</b>, run <b>{{ run_id }}</b> failed.</p>"
    "<p>Reason: {{ reason }}"
    "{% if ti is defined and ti %}; last failed task: {{ ti.task_id }}{% endif %}.</p>"
    "<p>See the run's Recon summary tab in the Airflow UI.</p>"
)
DEADLINE_SUBJECT = "[recon] {{ dag_run.dag_id }} run {{ dag_run.run_id }} missed its deadline"
DEADLINE_BODY = (
    "<p>DAG run <b>{{ dag_run.run_id }}</b> has not finished {{ minutes }} minutes after it was queued"
    " (RECON_DEADLINE_MINUTES). It keeps running; a backlog or a stuck chunk is likely.</p>"
)


def _recipients() -> list[str]:
    return [address.strip() for address in (settings.alert_email() or "").split(",") if address.strip()]


def failure_notifiers() -> list:
    """The DAG's on_failure_callback: one mail to RECON_ALERT_EMAIL naming the run and the reason."""
    recipients = _recipients()
    if not recipients:
        return []
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return [SmtpNotifier(to=recipients, subject=FAILURE_SUBJECT, html_content=FAILURE_BODY,
                         smtp_conn_id=settings.alert_smtp_conn_id())]


def deadline_alert():
    """A mail when a run has not finished RECON_DEADLINE_MINUTES after it was queued; None without
    recipients."""
    recipients = _recipients()
    if not recipients:
        return None
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    minutes = settings.deadline_minutes()
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback(SmtpNotifier, kwargs={
            "to": recipients, "subject": DEADLINE_SUBJECT,
            "html_content": DEADLINE_BODY.replace("{{ minutes }}", str(minutes)),
            "smtp_conn_id": settings.alert_smtp_conn_id(),
        }),
    )
