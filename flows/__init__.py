"""Prefect flows over damwatch's stages, and the ``damwatch`` command line.

A *flow* is one run of some of the stages (ingest, features, labels, train, detect, change)
recorded by Prefect; a *task* is one stage over a whole survey (DESIGN decision 1), which does
its parallel work on Dask. The flows, one per module:

==================  =====================================================================
``ingest``          a GeoTIFF into the store                       (:mod:`flows.ingest`)
``features``        per-tile features of surveys                   (:mod:`flows.features`)
``labels``          tile labels from a GeoJSON file or a band expression (:mod:`flows.labels`)
``train``           features + labels from truth + data-parallel training (:mod:`flows.train`)
``detect``          score surveys with a model, write maps         (:mod:`flows.detect`)
``change``          compare two dates of one area                  (:mod:`flows.change`)
``survey_pipeline`` a new survey: ingest → features → detect → change with the previous one
                    (:mod:`flows.survey_pipeline`)
``watch``           run survey_pipeline on new files in an inbox   (:mod:`flows.watch`)
``demo``            everything on a synthetic area, scored against its truth (:mod:`flows.demo`)
==================  =====================================================================

Shared machinery, one concept per module:

==================  =====================================================================
``tasks``           one Prefect task per stage, each with its retry policy
``session``         the Dask client shared by a flow run's stages (none for small work)
``server``          the persistent local Prefect server of ``damwatch server``
``resume``          skipping a stage whose inputs are unchanged (the stage ledger)
``failures``        which failures are retried; user errors shown without traceback
``runs``            ``runs/<run_id>/`` and the Prefect artifacts of a run
``headlines``       one-line summaries of stage outcomes
``inbox``           the watch flow's inbox, ledger and claims
``prefect_server``  Prefect's temporary server, tied to the life of the process that started it
``deployments``     schedules for ``damwatch serve``
``cli``             the ``damwatch`` command line (``commands/``: one module per command)
==================  =====================================================================

The ``damwatch`` commands that do work call these flows, so every command-line run is in
Prefect's run history. Data flows one way: flows → pipeline → ann.
"""
