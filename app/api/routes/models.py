"""Several models: GET /v1/models, and each model's (and version's) own URLs.

``POST /v1/models/{model_name}[/versions/{model_version}]/segment`` is ``/segment`` itself
(same body, options, formats and errors) on the model, or the exact version, named.
"""

from fastapi import APIRouter, Depends

from app.api.deps import ManagerDep, model_path, version_path
from app.api.routes import model_info, segment
from app.api.schemas import ErrorEnvelope, ModelInfo, ModelList, ModelStatus, VersionStatus

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(manager: ManagerDep) -> ModelList:
    """Every model, its versions and their states (loading, available, unloading, failed)."""
    return ModelList(models=[
        ModelStatus(name=name, default=name == manager.default_model, versions=[
            VersionStatus(version=v.version, state=v.state.value, fingerprint=v.fingerprint,
                          reason=v.reason)
            for v in sorted(versions.values(), key=lambda v: -v.version)])
        for name, versions in sorted(manager.models.items())])


_SEGMENT_RESPONSES = {**segment.RESPONSES, 404: {"model": ErrorEnvelope,
                                                  "description": "no such model or version"}}
_MODEL = "/v1/models/{model_name}"
_VERSION = "/v1/models/{model_name}/versions/{model_version}"
for prefix, documents in ((_MODEL, model_path), (_VERSION, version_path)):
    router.add_api_route(prefix, model_info.model_info, methods=["GET"], response_model=ModelInfo,
                         responses=model_info.RESPONSES, dependencies=[Depends(documents)],
                         summary="Model Info", tags=["model"],
                         name=f"model_info_{'version' if documents is version_path else 'model'}")
    router.add_api_route(prefix + "/segment", segment.segment, methods=["POST"],
                         response_class=segment.Response, responses=_SEGMENT_RESPONSES,
                         openapi_extra={"requestBody": segment.REQUEST_BODY},
                         dependencies=[Depends(documents)], tags=["segmentation"],
                         name=f"segment_{'version' if documents is version_path else 'model'}")
