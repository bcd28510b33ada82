"""The ABI fragments this package calls on TNT Core (Tangle v2), as Python data.

Written from the contracts' interfaces (``ITangleFull``, ``IMultiAssetDelegation``,
``OperatorStatusRegistry``; tnt-core-bindings 0.19.1) so that the package never needs the upstream
ABI files at runtime. Only what the operator, the dev stack and the client tools call is here.

One deliberate difference from the shipped ABI: ``JobSubmitted`` is declared with ``jobIndex``
**not** indexed, which is what the deployed contract emits (3 topics). The shipped ABI marks it
indexed and web3's decoder then rejects real logs; the topic hash is the same either way, so
decoders should read topics by hand and accept both layouts.

Custom errors for revert decoding live in ``errors_abi.json`` beside this module (package data,
from tnt-core's ``TangleErrors.json``): see :func:`decode_revert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak

#: Tangle (ITangleFull) functions the package calls.
_TANGLE_FUNCTIONS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "submitJob",
        "inputs": [
            {"name": "serviceId", "type": "uint64"},
            {"name": "jobIndex", "type": "uint8"},
            {"name": "inputs", "type": "bytes"},
        ],
        "outputs": [{"name": "callId", "type": "uint64"}],
        "stateMutability": "payable",
    },
    {
        "type": "function",
        "name": "submitJobFromQuote",
        "inputs": [
            {"name": "serviceId", "type": "uint64"},
            {"name": "jobIndex", "type": "uint8"},
            {"name": "inputs", "type": "bytes"},
            {
                "name": "quotes",
                "type": "tuple[]",
                "components": [
                    {
                        "name": "details",
                        "type": "tuple",
                        "components": [
                            {"name": "requester", "type": "address"},
                            {"name": "serviceId", "type": "uint64"},
                            {"name": "jobIndex", "type": "uint8"},
                            {"name": "price", "type": "uint256"},
                            {"name": "timestamp", "type": "uint64"},
                            {"name": "expiry", "type": "uint64"},
                            {"name": "confidentiality", "type": "uint8"},
                            {"name": "inputsHash", "type": "bytes32"},
                        ],
                    },
                    {"name": "signature", "type": "bytes"},
                    {"name": "operator", "type": "address"},
                ],
            },
        ],
        "outputs": [{"name": "callId", "type": "uint64"}],
        "stateMutability": "payable",
    },
    {
        "type": "function",
        "name": "submitResult",
        "inputs": [
            {"name": "serviceId", "type": "uint64"},
            {"name": "callId", "type": "uint64"},
            {"name": "result", "type": "bytes"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "submitResults",
        "inputs": [
            {"name": "serviceId", "type": "uint64"},
            {"name": "callIds", "type": "uint64[]"},
            {"name": "results", "type": "bytes[]"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "getJobCall",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "callId", "type": "uint64"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "jobIndex", "type": "uint8"},
                    {"name": "caller", "type": "address"},
                    {"name": "createdAt", "type": "uint64"},
                    {"name": "resultCount", "type": "uint32"},
                    {"name": "completed", "type": "bool"},
                    {"name": "isRFQ", "type": "bool"},
                    {"name": "payment", "type": "uint256"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getJobEventRate",
        "inputs": [{"name": "blueprintId", "type": "uint64"}, {"name": "jobIndex", "type": "uint8"}],
        "outputs": [{"name": "rate", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "setJobEventRates",
        "inputs": [
            {"name": "blueprintId", "type": "uint64"},
            {"name": "jobIndexes", "type": "uint8[]"},
            {"name": "rates", "type": "uint256[]"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "getJobQuotedOperators",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "callId", "type": "uint64"}],
        "outputs": [{"name": "", "type": "address[]"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getJobQuotedPrice",
        "inputs": [
            {"name": "serviceId", "type": "uint64"},
            {"name": "callId", "type": "uint64"},
            {"name": "operator", "type": "address"},
        ],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "createBlueprint",
        "inputs": [
            {
                "name": "definition",
                "type": "tuple",
                "components": [
                    {"name": "metadataUri", "type": "string"},
                    {"name": "metadataHash", "type": "bytes32"},
                    {"name": "manager", "type": "address"},
                    {"name": "masterManagerRevision", "type": "uint32"},
                    {"name": "hasConfig", "type": "bool"},
                    {
                        "name": "config",
                        "type": "tuple",
                        "components": [
                            {"name": "membership", "type": "uint8"},
                            {"name": "pricing", "type": "uint8"},
                            {"name": "minOperators", "type": "uint32"},
                            {"name": "maxOperators", "type": "uint32"},
                            {"name": "subscriptionRate", "type": "uint256"},
                            {"name": "subscriptionInterval", "type": "uint64"},
                            {"name": "eventRate", "type": "uint256"},
                        ],
                    },
                    {
                        "name": "metadata",
                        "type": "tuple",
                        "components": [
                            {"name": "name", "type": "string"},
                            {"name": "description", "type": "string"},
                            {"name": "author", "type": "string"},
                            {"name": "category", "type": "string"},
                            {"name": "codeRepository", "type": "string"},
                            {"name": "logo", "type": "string"},
                            {"name": "website", "type": "string"},
                            {"name": "license", "type": "string"},
                            {"name": "profilingData", "type": "string"},
                        ],
                    },
                    {
                        "name": "jobs",
                        "type": "tuple[]",
                        "components": [
                            {"name": "name", "type": "string"},
                            {"name": "description", "type": "string"},
                            {"name": "metadataUri", "type": "string"},
                            {"name": "paramsSchema", "type": "bytes"},
                            {"name": "resultSchema", "type": "bytes"},
                        ],
                    },
                    {"name": "registrationSchema", "type": "bytes"},
                    {"name": "requestSchema", "type": "bytes"},
                    {
                        "name": "sources",
                        "type": "tuple[]",
                        "components": [
                            {"name": "kind", "type": "uint8"},
                            {
                                "name": "container",
                                "type": "tuple",
                                "components": [
                                    {"name": "registry", "type": "string"},
                                    {"name": "image", "type": "string"},
                                    {"name": "tag", "type": "string"},
                                ],
                            },
                            {
                                "name": "wasm",
                                "type": "tuple",
                                "components": [
                                    {"name": "runtime", "type": "uint8"},
                                    {"name": "fetcher", "type": "uint8"},
                                    {"name": "artifactUri", "type": "string"},
                                    {"name": "entrypoint", "type": "string"},
                                ],
                            },
                            {
                                "name": "native",
                                "type": "tuple",
                                "components": [
                                    {"name": "fetcher", "type": "uint8"},
                                    {"name": "artifactUri", "type": "string"},
                                    {"name": "entrypoint", "type": "string"},
                                ],
                            },
                            {
                                "name": "testing",
                                "type": "tuple",
                                "components": [
                                    {"name": "cargoPackage", "type": "string"},
                                    {"name": "cargoBin", "type": "string"},
                                    {"name": "basePath", "type": "string"},
                                ],
                            },
                            {
                                "name": "binaries",
                                "type": "tuple[]",
                                "components": [
                                    {"name": "arch", "type": "uint8"},
                                    {"name": "os", "type": "uint8"},
                                    {"name": "name", "type": "string"},
                                    {"name": "sha256", "type": "bytes32"},
                                ],
                            },
                        ],
                    },
                    {"name": "supportedMemberships", "type": "uint8[]"},
                ],
            },
        ],
        "outputs": [{"name": "blueprintId", "type": "uint64"}],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "getBlueprint",
        "inputs": [{"name": "blueprintId", "type": "uint64"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "owner", "type": "address"},
                    {"name": "manager", "type": "address"},
                    {"name": "createdAt", "type": "uint64"},
                    {"name": "membership", "type": "uint8"},
                    {"name": "pricing", "type": "uint8"},
                    {"name": "active", "type": "bool"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "blueprintCount",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint64"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "registerOperator",
        "inputs": [
            {"name": "blueprintId", "type": "uint64"},
            {"name": "ecdsaPublicKey", "type": "bytes"},
            {"name": "rpcAddress", "type": "string"},
            {"name": "registrationInputs", "type": "bytes"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "registerOperator",
        "inputs": [
            {"name": "blueprintId", "type": "uint64"},
            {"name": "ecdsaPublicKey", "type": "bytes"},
            {"name": "rpcAddress", "type": "string"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "unregisterOperator",
        "inputs": [{"name": "blueprintId", "type": "uint64"}],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "updateOperatorPreferences",
        "inputs": [
            {"name": "blueprintId", "type": "uint64"},
            {"name": "ecdsaPublicKey", "type": "bytes"},
            {"name": "rpcAddress", "type": "string"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "isOperatorRegistered",
        "inputs": [{"name": "blueprintId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getOperatorPublicKey",
        "inputs": [{"name": "blueprintId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bytes"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getOperatorPreferences",
        "inputs": [{"name": "blueprintId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "ecdsaPublicKey", "type": "bytes"},
                    {"name": "rpcAddress", "type": "string"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "requestService",
        "inputs": [
            {"name": "blueprintId", "type": "uint64"},
            {"name": "operators", "type": "address[]"},
            {"name": "config", "type": "bytes"},
            {"name": "permittedCallers", "type": "address[]"},
            {"name": "ttl", "type": "uint64"},
            {"name": "paymentToken", "type": "address"},
            {"name": "paymentAmount", "type": "uint256"},
            {"name": "confidentiality", "type": "uint8"},
        ],
        "outputs": [{"name": "requestId", "type": "uint64"}],
        "stateMutability": "payable",
    },
    {
        "type": "function",
        "name": "approveService",
        "inputs": [
            {
                "name": "params",
                "type": "tuple",
                "components": [
                    {"name": "requestId", "type": "uint64"},
                    {
                        "name": "securityCommitments",
                        "type": "tuple[]",
                        "components": [
                            {
                                "name": "asset",
                                "type": "tuple",
                                "components": [
                                    {"name": "kind", "type": "uint8"},
                                    {"name": "token", "type": "address"},
                                ],
                            },
                            {"name": "exposureBps", "type": "uint16"},
                        ],
                    },
                    {"name": "blsPubkey", "type": "uint256[4]"},
                    {"name": "blsPopSignature", "type": "uint256[2]"},
                    {
                        "name": "teeCommitments",
                        "type": "tuple[]",
                        "components": [
                            {"name": "backend", "type": "uint8"},
                            {"name": "expectedMeasurement", "type": "bytes32"},
                            {"name": "nonceBinding", "type": "bytes32"},
                            {"name": "expiresAt", "type": "uint64"},
                        ],
                    },
                ],
            },
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "rejectService",
        "inputs": [{"name": "requestId", "type": "uint64"}],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "getServiceRequest",
        "inputs": [{"name": "requestId", "type": "uint64"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "blueprintId", "type": "uint64"},
                    {"name": "requester", "type": "address"},
                    {"name": "createdAt", "type": "uint64"},
                    {"name": "ttl", "type": "uint64"},
                    {"name": "operatorCount", "type": "uint32"},
                    {"name": "approvalCount", "type": "uint32"},
                    {"name": "paymentToken", "type": "address"},
                    {"name": "paymentAmount", "type": "uint256"},
                    {"name": "membership", "type": "uint8"},
                    {"name": "minOperators", "type": "uint32"},
                    {"name": "maxOperators", "type": "uint32"},
                    {"name": "rejected", "type": "bool"},
                    {"name": "confidentiality", "type": "uint8"},
                    {"name": "activated", "type": "bool"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getService",
        "inputs": [{"name": "serviceId", "type": "uint64"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "blueprintId", "type": "uint64"},
                    {"name": "owner", "type": "address"},
                    {"name": "createdAt", "type": "uint64"},
                    {"name": "ttl", "type": "uint64"},
                    {"name": "terminatedAt", "type": "uint64"},
                    {"name": "lastPaymentAt", "type": "uint64"},
                    {"name": "operatorCount", "type": "uint32"},
                    {"name": "minOperators", "type": "uint32"},
                    {"name": "maxOperators", "type": "uint32"},
                    {"name": "membership", "type": "uint8"},
                    {"name": "pricing", "type": "uint8"},
                    {"name": "status", "type": "uint8"},
                    {"name": "confidentiality", "type": "uint8"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getServiceOperators",
        "inputs": [{"name": "serviceId", "type": "uint64"}],
        "outputs": [{"name": "", "type": "address[]"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getServiceOperator",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "exposureBps", "type": "uint16"},
                    {"name": "joinedAt", "type": "uint64"},
                    {"name": "leftAt", "type": "uint64"},
                    {"name": "active", "type": "bool"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "isServiceOperator",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "isServiceActive",
        "inputs": [{"name": "serviceId", "type": "uint64"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "serviceCount",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint64"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "addPermittedCaller",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "caller", "type": "address"}],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "removePermittedCaller",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "caller", "type": "address"}],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "isPermittedCaller",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "caller", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "operatorStatusRegistry",
        "inputs": [],
        "outputs": [{"name": "", "type": "address"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "tntToken",
        "inputs": [],
        "outputs": [{"name": "", "type": "address"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "managerHookGasLimit",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
]

#: Tangle events, JobSubmitted in the DEPLOYED layout (jobIndex not indexed).
_TANGLE_EVENTS: list[dict[str, Any]] = [
    {
        "type": "event",
        "name": "JobSubmitted",
        "inputs": [
            {"name": "serviceId", "type": "uint64", "indexed": True},
            {"name": "callId", "type": "uint64", "indexed": True},
            {"name": "jobIndex", "type": "uint8", "indexed": False},
            {"name": "caller", "type": "address", "indexed": False},
            {"name": "inputs", "type": "bytes", "indexed": False},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "JobSubmittedFromQuote",
        "inputs": [
            {"name": "serviceId", "type": "uint64", "indexed": True},
            {"name": "callId", "type": "uint64", "indexed": True},
            {"name": "jobIndex", "type": "uint8", "indexed": False},
            {"name": "caller", "type": "address", "indexed": False},
            {"name": "quotedOperators", "type": "address[]", "indexed": False},
            {"name": "totalPrice", "type": "uint256", "indexed": False},
            {"name": "inputs", "type": "bytes", "indexed": False},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "JobResultSubmitted",
        "inputs": [
            {"name": "serviceId", "type": "uint64", "indexed": True},
            {"name": "callId", "type": "uint64", "indexed": True},
            {"name": "operator", "type": "address", "indexed": True},
            {"name": "result", "type": "bytes", "indexed": False},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "JobCompleted",
        "inputs": [
            {"name": "serviceId", "type": "uint64", "indexed": True},
            {"name": "callId", "type": "uint64", "indexed": True},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "ServiceRequested",
        "inputs": [
            {"name": "requestId", "type": "uint64", "indexed": True},
            {"name": "blueprintId", "type": "uint64", "indexed": True},
            {"name": "requester", "type": "address", "indexed": True},
            {"name": "confidentiality", "type": "uint8", "indexed": False},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "ServiceApproved",
        "inputs": [
            {"name": "requestId", "type": "uint64", "indexed": True},
            {"name": "operator", "type": "address", "indexed": True},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "ServiceActivated",
        "inputs": [
            {"name": "serviceId", "type": "uint64", "indexed": True},
            {"name": "requestId", "type": "uint64", "indexed": True},
            {"name": "blueprintId", "type": "uint64", "indexed": True},
            {"name": "confidentiality", "type": "uint8", "indexed": False},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "ServiceTerminated",
        "inputs": [{"name": "serviceId", "type": "uint64", "indexed": True}],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "BlueprintCreated",
        "inputs": [
            {"name": "blueprintId", "type": "uint64", "indexed": True},
            {"name": "owner", "type": "address", "indexed": True},
            {"name": "manager", "type": "address", "indexed": False},
            {"name": "metadataUri", "type": "string", "indexed": False},
            {"name": "metadataHash", "type": "bytes32", "indexed": False},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "OperatorRegistered",
        "inputs": [
            {"name": "blueprintId", "type": "uint64", "indexed": True},
            {"name": "operator", "type": "address", "indexed": True},
            {"name": "ecdsaPublicKey", "type": "bytes", "indexed": False},
            {"name": "rpcAddress", "type": "string", "indexed": False},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "OperatorUnregistered",
        "inputs": [
            {"name": "blueprintId", "type": "uint64", "indexed": True},
            {"name": "operator", "type": "address", "indexed": True},
        ],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "OperatorPreferencesUpdated",
        "inputs": [
            {"name": "blueprintId", "type": "uint64", "indexed": True},
            {"name": "operator", "type": "address", "indexed": True},
            {"name": "ecdsaPublicKey", "type": "bytes", "indexed": False},
            {"name": "rpcAddress", "type": "string", "indexed": False},
        ],
        "anonymous": False,
    },
]

#: MultiAssetDelegation (staking) fragments.
_STAKING_FUNCTIONS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "registerOperator",
        "inputs": [],
        "outputs": [],
        "stateMutability": "payable",
    },
    {
        "type": "function",
        "name": "registerOperatorWithAsset",
        "inputs": [{"name": "token", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "increaseStakeWithAsset",
        "inputs": [{"name": "token", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "minOperatorStake",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "operatorBondToken",
        "inputs": [],
        "outputs": [{"name": "", "type": "address"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "isOperator",
        "inputs": [{"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "isOperatorActive",
        "inputs": [{"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getOperatorSelfStake",
        "inputs": [{"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getOperatorStake",
        "inputs": [{"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "meetsStakeRequirement",
        "inputs": [{"name": "operator", "type": "address"}, {"name": "required", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getAssetConfig",
        "inputs": [{"name": "token", "type": "address"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "enabled", "type": "bool"},
                    {"name": "rewardMultiplierBps", "type": "uint16"},
                    {"name": "minOperatorStake", "type": "uint256"},
                    {"name": "minDelegation", "type": "uint256"},
                    {"name": "depositCap", "type": "uint256"},
                    {"name": "currentDeposits", "type": "uint256"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "event",
        "name": "OperatorRegistered",
        "inputs": [
            {"name": "operator", "type": "address", "indexed": True},
            {"name": "stake", "type": "uint256", "indexed": False},
        ],
        "anonymous": False,
    },
]

#: OperatorStatusRegistry fragments.
_STATUS_REGISTRY_FUNCTIONS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "submitHeartbeat",
        "inputs": [
            {"name": "serviceId", "type": "uint64"},
            {"name": "blueprintId", "type": "uint64"},
            {"name": "statusCode", "type": "uint8"},
            {"name": "metrics", "type": "bytes"},
            {"name": "timestamp", "type": "uint64"},
            {"name": "signature", "type": "bytes"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "submitHeartbeatDirect",
        "inputs": [
            {"name": "serviceId", "type": "uint64"},
            {"name": "blueprintId", "type": "uint64"},
            {"name": "statusCode", "type": "uint8"},
            {"name": "metrics", "type": "bytes"},
        ],
        "outputs": [],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "getHeartbeatConfig",
        "inputs": [{"name": "serviceId", "type": "uint64"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "interval", "type": "uint64"},
                    {"name": "maxMissed", "type": "uint8"},
                    {"name": "customMetrics", "type": "bool"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getLastHeartbeat",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "isOnline",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "isHeartbeatCurrent",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getOperatorStatus",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "uint8"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "getOperatorState",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "lastHeartbeat", "type": "uint256"},
                    {"name": "consecutiveBeats", "type": "uint64"},
                    {"name": "missedBeats", "type": "uint8"},
                    {"name": "status", "type": "uint8"},
                    {"name": "lastMetricsHash", "type": "bytes32"},
                ],
            },
        ],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "isRegisteredOperator",
        "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "DOMAIN_SEPARATOR",
        "inputs": [],
        "outputs": [{"name": "", "type": "bytes32"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "HEARTBEAT_TYPEHASH",
        "inputs": [],
        "outputs": [{"name": "", "type": "bytes32"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "DEFAULT_HEARTBEAT_INTERVAL",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint64"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "HEARTBEAT_MAX_AGE",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint64"}],
        "stateMutability": "view",
    },
    {
        "type": "event",
        "name": "HeartbeatReceived",
        "inputs": [
            {"name": "serviceId", "type": "uint64", "indexed": True},
            {"name": "blueprintId", "type": "uint64", "indexed": True},
            {"name": "operator", "type": "address", "indexed": True},
            {"name": "statusCode", "type": "uint8", "indexed": False},
            {"name": "timestamp", "type": "uint256", "indexed": False},
        ],
        "anonymous": False,
    },
]

#: topic0 of each event: keccak256 of its canonical signature (shown beside it).
# JobSubmitted(uint64,uint64,uint8,address,bytes)
JOB_SUBMITTED_TOPIC = "0xde37cc48d21778e1c9a075c4e41c5aff6918c3ea6151221f0af3ce8121a29db5"
# JobSubmittedFromQuote(uint64,uint64,uint8,address,address[],uint256,bytes)
JOB_SUBMITTED_FROM_QUOTE_TOPIC = "0xb707259a8a1604adca251fecf84eb283329cd45175690dcb8ff1cf52a6252422"
# JobResultSubmitted(uint64,uint64,address,bytes)
JOB_RESULT_SUBMITTED_TOPIC = "0x8a04f99fe23284e874e8dd017345248279cc59701695e73bcdbeb6241bcd2ac6"
# JobCompleted(uint64,uint64)
JOB_COMPLETED_TOPIC = "0x60a7649f6e93e7a3ce1dc9729c20e3d95dce28c6a6bd957cde09d8a1cb37c19f"
# ServiceRequested(uint64,uint64,address,uint8)
SERVICE_REQUESTED_TOPIC = "0x5c92301c22df4cc7209a8b0b25b2f5787750237e110e09a276a9f7d16e6709a4"
# ServiceApproved(uint64,address)
SERVICE_APPROVED_TOPIC = "0xceda1a44ead4da3d3abaaa941afa6d9530fd84dd8e99385c9183d986dcab980f"
# ServiceActivated(uint64,uint64,uint64,uint8)
SERVICE_ACTIVATED_TOPIC = "0x0325bb1c453505f13d5546dda087be5e237f7cf249f79a0ee406d97ef0ca7ee9"
# ServiceTerminated(uint64)
SERVICE_TERMINATED_TOPIC = "0x3fd558a59bbce1d996d17eab7fde314bcd201ec3f17375a7f873b3162927e881"
# BlueprintCreated(uint64,address,address,string,bytes32)
BLUEPRINT_CREATED_TOPIC = "0x7ccd26bc6775ae4936200d467efc9a0e4e5f2fa8877e86faa1c7a1453a93a7fc"
# OperatorRegistered(uint64,address,bytes,string)
OPERATOR_REGISTERED_TOPIC = "0x0455541bf5feb5fcc32e827dc18bf2175448427c6ae72c8d5e985c99e4104102"
# OperatorUnregistered(uint64,address)
OPERATOR_UNREGISTERED_TOPIC = "0x88e46e95bcdf1020c0caf9f3dd5fde69c41d2151dbbca0a77c03c4e28b4d3ec1"
# OperatorPreferencesUpdated(uint64,address,bytes,string)
OPERATOR_PREFERENCES_UPDATED_TOPIC = "0xbaca468a52670b77d74d0423b33ac5227a7f1a5c548e07006b29c6e2289779a6"
# HeartbeatReceived(uint64,uint64,address,uint8,uint256)
HEARTBEAT_RECEIVED_TOPIC = "0x658918e3147f13dd068ec21437b4c25c21682a8dc2129348671ead000db3e7b9"
# OperatorRegistered(address,uint256)
STAKING_OPERATOR_REGISTERED_TOPIC = "0xbc11617e575d658c74e921c8df22f8e48566072fa78145a6cfe18420bf8d0c4e"


#: ERC20 fragments (the TNT token is the operator bond token).
ERC20_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "approve",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "allowance",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "balanceOf",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "transfer",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "nonpayable",
    },
    {
        "type": "function",
        "name": "decimals",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint8"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "symbol",
        "inputs": [],
        "outputs": [{"name": "", "type": "string"}],
        "stateMutability": "view",
    },
]

#: The Tangle core contract: the functions and events above.
TANGLE_ABI: list[dict[str, Any]] = _TANGLE_FUNCTIONS + _TANGLE_EVENTS
#: The MultiAssetDelegation (staking) proxy.
STAKING_ABI: list[dict[str, Any]] = _STAKING_FUNCTIONS
#: The OperatorStatusRegistry (heartbeats).
STATUS_REGISTRY_ABI: list[dict[str, Any]] = _STATUS_REGISTRY_FUNCTIONS

#: The data part of a deployed ``JobSubmitted`` log (topics: topic0, serviceId, callId).
JOB_SUBMITTED_DATA_TYPES: tuple[str, ...] = ("uint8", "address", "bytes")
#: The data part of a ``JobSubmitted`` log in the shipped-ABI layout (jobIndex in topic 3).
JOB_SUBMITTED_INDEXED_DATA_TYPES: tuple[str, ...] = ("address", "bytes")
#: The data part of a ``JobSubmittedFromQuote`` log (topics: topic0, serviceId, callId).
JOB_SUBMITTED_FROM_QUOTE_DATA_TYPES: tuple[str, ...] = ("uint8", "address", "address[]", "uint256", "bytes")
#: The data part of a ``JobResultSubmitted`` log (topics: topic0, serviceId, callId, operator).
JOB_RESULT_SUBMITTED_DATA_TYPES: tuple[str, ...] = ("bytes",)


def canonical_type(param: dict[str, Any]) -> str:
    """The canonical ABI type of one parameter, with tuples spelled out (``(uint8,address)[]``)."""
    kind = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple'):]}"
    return kind


def signature(fragment: dict[str, Any]) -> str:
    """``name(type,...)`` of a function, event or error fragment."""
    return f"{fragment['name']}({','.join(canonical_type(p) for p in fragment.get('inputs', []))})"


def event_topic(fragment: dict[str, Any]) -> str:
    """topic0 of an event fragment, ``0x``-prefixed lowercase hex."""
    return "0x" + keccak(text=signature(fragment)).hex()


def selector(fragment: dict[str, Any]) -> bytes:
    """The 4-byte selector of a function or error fragment."""
    return keccak(text=signature(fragment))[:4]


def fragment(abi: list[dict[str, Any]], name: str, kind: str | None = None) -> dict[str, Any]:
    """The first fragment named ``name`` (of ``kind`` if given); KeyError when absent."""
    for item in abi:
        if item.get("name") == name and (kind is None or item["type"] == kind):
            return item
    raise KeyError(f"{name} not in ABI")


# --- revert decoding --------------------------------------------------------------------------

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


@dataclass(frozen=True, slots=True)
class DecodedRevert:
    """A revert reason: a custom error's name and arguments, ``Error``/``Panic``, or unknown.

    ``name`` is ``"Error"`` for ``require`` messages, ``"Panic"`` for assertion/arith failures,
    ``"EmptyRevert"`` when the contract gave no data, and ``"UnknownError"`` when the selector is
    not one we know (``args`` then holds the selector in hex).
    """

    name: str
    args: tuple[Any, ...] = ()
    data: bytes = field(default=b"", repr=False)

    @property
    def known(self) -> bool:
        return self.name not in ("UnknownError", "EmptyRevert")

    def __str__(self) -> str:
        shown = ", ".join(_show(a) for a in self.args)
        return f"{self.name}({shown})"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


@cache
def errors_abi() -> list[dict[str, Any]]:
    """The custom errors of TNT Core and OpenZeppelin v5 (package data ``errors_abi.json``)."""
    text = resources.files(__package__).joinpath("errors_abi.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _errors_by_selector() -> dict[bytes, list[dict[str, Any]]]:
    table: dict[bytes, list[dict[str, Any]]] = {}
    for item in errors_abi():
        table.setdefault(selector(item), []).append(item)
    return table


def decode_revert(data: bytes | str | None) -> DecodedRevert:
    """Decode revert data (bytes or ``0x`` hex) into the error's name and arguments.

    Never raises: data that does not decode is reported as ``UnknownError`` with its selector.
    """
    if data is None:
        raw = b""
    elif isinstance(data, str):
        text = data[2:] if data.startswith(("0x", "0X")) else data
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return DecodedRevert("UnknownError", (data,), b"")
    else:
        raw = bytes(data)
    if len(raw) < 4:
        return DecodedRevert("EmptyRevert", (), raw) if not raw else DecodedRevert(
            "UnknownError", ("0x" + raw.hex(),), raw
        )
    head, body = raw[:4], raw[4:]
    if head == ERROR_STRING_SELECTOR:
        try:
            return DecodedRevert("Error", tuple(abi_decode(["string"], body)), raw)
        except (DecodingError, ValueError, OverflowError):
            pass
    elif head == PANIC_SELECTOR:
        try:
            return DecodedRevert("Panic", tuple(abi_decode(["uint256"], body)), raw)
        except (DecodingError, ValueError, OverflowError):
            pass
    for item in _errors_by_selector().get(head, []):
        types = [canonical_type(p) for p in item.get("inputs", [])]
        try:
            return DecodedRevert(item["name"], tuple(abi_decode(types, body)), raw)
        except (DecodingError, ValueError, OverflowError):
            continue
    return DecodedRevert("UnknownError", ("0x" + head.hex(),), raw)


def revert_data_of(exc: BaseException) -> bytes | None:
    """The raw revert data a web3 exception carries, if any.

    web3 7/8 put it on ``ContractCustomError.data`` / ``ContractLogicError.data`` (hex string), and
    some providers only in the JSON-RPC error dict in ``args``; this looks in each place.
    """
    candidates: list[Any] = [getattr(exc, "data", None)]
    candidates += [a for a in getattr(exc, "args", ()) if isinstance(a, (str, dict))]
    for item in candidates:
        if isinstance(item, dict):
            item = item.get("data")
            if isinstance(item, dict):
                item = item.get("data")
        if isinstance(item, (bytes, bytearray)):
            return bytes(item)
        if isinstance(item, str) and item.startswith("0x"):
            try:
                return bytes.fromhex(item[2:])
            except ValueError:
                continue
    return None
