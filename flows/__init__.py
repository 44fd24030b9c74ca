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

Shared machinery: :mod:`flows.tasks` (the stage tasks, their retry policy and the Dask cluster
session), :mod:`flows.resume` (skipping stages whose inputs are unchanged), :mod:`flows.runs`
(``runs/<run_id>/`` and the Prefect artifacts), :mod:`flows.inbox` (the watch flow's inbox and
claims) and :mod:`flows.deployments` (schedules for ``damwatch serve``). The ``damwatch``
commands that do work (features, labels, train, detect, change, run, demo, serve) call these
flows, so every command-line run is in Prefect's run history.
"""
