"""The web UI (`scalestyle serve`): a Gradio app over the Python API (:mod:`scalestyle.ui.app`) and user
studies of style methods stored in SQLite (:mod:`scalestyle.ui.study`). Gradio is imported by ``app`` only,
so the study store works without the ``ui`` extra."""
