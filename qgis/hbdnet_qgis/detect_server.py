"""Detect bridges (server): sends the raster (or its URL) to ``hbdnet serve``, follows the job with its
progress, cancels it when the user cancels, and fetches the bridges."""

import os
import time

from qgis.core import (
    QgsApplication,
    QgsAuthMethodConfig,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterString,
)

from . import common
from .client import Service, ServiceError

SERVER, AUTH = "SERVER", "AUTH"
KEY_ENV = "HBDNET_API_KEY"
REMOTE = ("/vsicurl/", "/vsis3/", "http://", "https://", "s3://")


def api_key(authcfg):
    """The key kept in QGIS's authentication database under ``authcfg`` (a Basic configuration whose
    password is the key), else ``HBDNET_API_KEY`` (for batch runs), else None."""
    if authcfg:
        config = QgsAuthMethodConfig()
        if not QgsApplication.authManager().loadAuthenticationConfig(authcfg, config, True):
            raise QgsProcessingException(f"authentication configuration {authcfg} not found, or QGIS's "
                                         "authentication database is locked")
        key = config.config("password") or config.config("key")
        if not key:
            raise QgsProcessingException(f"authentication configuration {authcfg} holds no key: make it a Basic "
                                         "configuration with the API key as its password")
        return key
    return os.environ.get(KEY_ENV) or None


def remote_href(source):
    """The URL of a raster read over HTTP or S3 (the server fetches it itself), else None."""
    path = source.split("|", 1)[0]
    for prefix in ("/vsicurl/", "/vsis3/"):
        if path.startswith(prefix):
            rest = path[len(prefix):]
            return rest if prefix == "/vsicurl/" else f"s3://{rest}"
    return path if path.startswith(("http://", "https://", "s3://")) else None


class DetectBridgesServer(QgsProcessingAlgorithm):
    def name(self):
        return "detectbridgesserver"

    def displayName(self):
        return "Detect bridges (server)"

    def shortHelpString(self):
        return ("Finds bridges in a raster with an hbdnet server (hbdnet serve): the raster is uploaded, or its "
                "URL sent when QGIS reads it over HTTP or S3; the job's progress shows here, Cancel cancels the "
                "job on the server, and the bridges come back as oriented boxes with their QGIS style. The API key "
                "is kept in QGIS's authentication database: a Basic configuration whose password is the key. An "
                "extent or polygons limit the search (the raster is cut to them before the upload).")

    def createInstance(self):
        return DetectBridgesServer()

    def initAlgorithm(self, config=None):
        common.add_common_parameters(self)
        self.addParameter(QgsProcessingParameterString(SERVER, "hbdnet server", "http://localhost:8000"))
        self.addParameter(QgsProcessingParameterAuthConfig(AUTH, "API key (authentication configuration)",
                                                           optional=True))
        common.add_output_parameter(self)

    def processAlgorithm(self, parameters, context, feedback):
        source, layer = common.raster_file(self, parameters, context)
        area, box = common.area_of_interest(self, parameters, context, layer)
        output = common.output_path(self, parameters, context)
        service = Service(self.parameterAsString(parameters, SERVER, context),
                          api_key(self.parameterAsString(parameters, AUTH, context)))
        bands = common.bands_option(self, parameters, context)
        options = {"score_threshold": self.parameterAsDouble(parameters, common.SCORE, context),
                   "format": "gpkg", **({"bands": bands[1]} if bands else {})}
        try:
            job, offset = self._submit(service, source, box, options, feedback)
            feedback.pushInfo(f"job {job['jobID']} accepted: {(job.get('windows') or {}).get('total', '?')} windows")
            self._follow(service, job["jobID"], feedback)
            fmt = os.path.splitext(output)[1].lower().lstrip(".")
            service.download(job["jobID"], fmt, output)
            if fmt != "gpkg":  # the style beside the file, where QGIS looks for it
                service.download(job["jobID"], "qml", os.path.splitext(output)[0] + ".qml")
        except ServiceError as exc:
            raise QgsProcessingException(str(exc)) from None
        uri = common.layer_uri(output, "bridges")
        if area is not None:
            common.finish_cut(uri, area, layer.crs(), offset, os.path.basename(source.split("|", 1)[0]), context,
                              feedback)
        return {common.OUTPUT: uri}

    def _submit(self, service, source, box, options, feedback):
        href = remote_href(source)
        if href is not None and box is None:
            feedback.pushInfo(f"the server reads {href} itself")
            return service.submit_href(href, options), (0, 0)
        path = source.split("|", 1)[0]
        scene, offset = common.clip(path, box, "GTiff") if box is not None else (path, (0, 0))
        if not os.path.isfile(scene):
            raise QgsProcessingException(f"{source} is not a file this tool can upload")
        feedback.pushInfo(f"uploading {os.path.basename(scene)} ({os.path.getsize(scene) / 2**20:.1f} MB)")
        try:
            return service.submit_file(scene, options, cancelled=feedback.isCanceled), offset
        finally:
            if scene != path:
                os.remove(scene)

    def _follow(self, service, job_id, feedback):
        """Poll the job until it ends; on Cancel, cancel it on the server."""
        delay = 0.25
        while True:
            if feedback.isCanceled():
                service.cancel(job_id)
                raise QgsProcessingException(f"cancelled: job {job_id} was cancelled on the server")
            job = service.status(job_id)
            windows = job.get("windows") or {}
            if windows.get("total"):
                feedback.setProgress(100.0 * windows.get("done", 0) / windows["total"])
            if job["status"] == "successful":
                feedback.pushInfo(f"{job.get('detections', 0)} bridge(s) found")
                return
            if job["status"] in ("failed", "dismissed"):
                raise QgsProcessingException(f"the job {job['status']}: {job.get('message') or 'no reason given'}")
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)
