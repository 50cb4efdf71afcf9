"""The Recon view: a FastAPI app that Airflow's API server mounts under ``/recon``.

``recon_ui.py`` (the plugin file every Airflow process imports) asks for
:func:`recon.web.app.recon_app` only in the API server; keep this file free of imports so that
``recon.web.database`` stays cheap for the run-note listener in the scheduler.
"""
