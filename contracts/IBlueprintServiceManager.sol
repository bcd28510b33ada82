// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.26;

/// @title IBlueprintServiceManager
/// @notice The hooks TNT Core (Tangle v2) calls on a blueprint's service manager, written from the
///         ABI of tnt-core-bindings 0.19.1 (`bindings/abi/IBlueprintServiceManager.json`).
/// @dev Every state-changing hook is called by the Tangle contract with a gas stipend (500k by
///      default). A revert in `onRegister`, `onRequest` or `onJobCall` rejects the action; the
///      other hooks are best effort (a failure only emits `ManagerHookFailed`).
interface IBlueprintServiceManager {
    /// @dev `Types.BinaryVersion` of tnt-core.
    struct BinaryVersion {
        uint64 versionId;
        uint64 publishedAt;
        bool deprecated;
        bytes32 sha256Hash;
        bytes32 attestationHash;
    }

    // --- blueprint and operator lifecycle ---
    function onBlueprintCreated(uint64 blueprintId, address owner, address tangleCore) external;
    function onRegister(address operator, bytes calldata registrationInputs) external payable;
    function onUnregister(address operator) external;
    function onUpdatePreferences(address operator, bytes calldata newPreferences) external payable;

    // --- service configuration queries ---
    function getHeartbeatInterval(uint64 serviceId) external view returns (bool useDefault, uint64 interval);
    function getHeartbeatThreshold(uint64 serviceId) external view returns (bool useDefault, uint8 threshold);
    function getSlashingWindow(uint64 serviceId) external view returns (bool useDefault, uint64 window);
    function getExitConfig(uint64 serviceId)
        external
        view
        returns (bool useDefault, uint64 minCommitmentDuration, uint64 exitQueueDuration, bool forceExitAllowed);
    function getNonPaymentTerminationPolicy(uint64 serviceId)
        external
        view
        returns (bool useDefault, uint64 graceIntervals);
    function forceRemoveAllowsBelowMin(uint64 serviceId) external view returns (bool ok);
    function computeBillAdjustmentBps(uint64 serviceId, uint64 periodStart, uint64 periodEnd)
        external
        view
        returns (uint16 adjustmentBps);

    // --- service lifecycle ---
    function onRequest(
        uint64 requestId,
        address requester,
        address[] calldata operators,
        bytes calldata requestInputs,
        uint64 ttl,
        address paymentAsset,
        uint256 paymentAmount
    ) external payable;
    function onApprove(address operator, uint64 requestId, uint8 stakingPercent) external payable;
    function onReject(address operator, uint64 requestId) external;
    function onServiceInitialized(
        uint64 blueprintId,
        uint64 requestId,
        uint64 serviceId,
        address owner,
        address[] calldata permittedCallers,
        uint64 ttl
    ) external;
    function onServiceTermination(uint64 serviceId, address owner) external;

    // --- dynamic membership ---
    function canJoin(uint64 serviceId, address operator) external view returns (bool allowed);
    function onOperatorJoined(uint64 serviceId, address operator, uint16 exposureBps) external;
    function canLeave(uint64 serviceId, address operator) external view returns (bool allowed);
    function onOperatorLeft(uint64 serviceId, address operator) external;
    function onExitScheduled(uint64 serviceId, address operator, uint64 executeAfter) external;
    function onExitCanceled(uint64 serviceId, address operator) external;

    // --- jobs ---
    function onJobCall(uint64 serviceId, uint8 job, uint64 jobCallId, bytes calldata inputs) external payable;
    function onJobResult(
        uint64 serviceId,
        uint8 job,
        uint64 jobCallId,
        address operator,
        bytes32 inputsHash,
        bytes calldata outputs
    ) external payable;

    // --- slashing ---
    function onUnappliedSlash(uint64 serviceId, bytes calldata offender, uint8 slashPercent) external;
    function onSlash(uint64 serviceId, bytes calldata offender, uint8 slashPercent) external;
    function querySlashingOrigin(uint64 serviceId) external view returns (address slashingOrigin);
    function queryDisputeOrigin(uint64 serviceId) external view returns (address disputeOrigin);

    // --- payments ---
    function queryDeveloperPaymentAddress(uint64 serviceId)
        external
        view
        returns (address payable developerPaymentAddress);
    function queryIsPaymentAssetAllowed(uint64 serviceId, address asset) external view returns (bool isAllowed);

    // --- job configuration and aggregation ---
    function getRequiredResultCount(uint64 serviceId, uint8 jobIndex) external view returns (uint32 required);
    function requiresAggregation(uint64 serviceId, uint8 jobIndex) external view returns (bool required);
    function getAggregationThreshold(uint64 serviceId, uint8 jobIndex)
        external
        view
        returns (uint16 thresholdBps, uint8 thresholdType);
    function onAggregatedResult(
        uint64 serviceId,
        uint8 job,
        uint64 jobCallId,
        bytes calldata output,
        uint256 signerBitmap,
        uint256[2] calldata aggregatedSignature,
        uint256[4] calldata aggregatedPubkey
    ) external;

    // --- stake and binary versions ---
    function getMinOperatorStake() external view returns (bool useDefault, uint256 minStake);
    function onBinaryVersionPublished(uint64 blueprintId, BinaryVersion calldata version, string calldata binaryUri)
        external;
    function onOperatorBinaryAcked(uint64 serviceId, uint64 versionId, address operator) external;
}

/// @notice The few Tangle views the manager reads back (the source of truth for membership,
///         payments and quotes). Struct layouts follow tnt-core `Types.sol`; enums are read as uint8.
interface ITangleMembership {
    /// @dev `Types.JobCall`.
    struct JobCallView {
        uint8 jobIndex;
        address caller;
        uint64 createdAt;
        uint32 resultCount;
        bool completed;
        bool isRFQ;
        uint256 payment;
    }

    /// @dev `Types.Service`.
    struct ServiceView {
        uint64 blueprintId;
        address owner;
        uint64 createdAt;
        uint64 ttl;
        uint64 terminatedAt;
        uint64 lastPaymentAt;
        uint32 operatorCount;
        uint32 minOperators;
        uint32 maxOperators;
        uint8 membership;
        uint8 pricing;
        uint8 status;
        uint8 confidentiality;
    }

    function getServiceOperators(uint64 serviceId) external view returns (address[] memory);
    function isOperatorRegistered(uint64 blueprintId, address operator) external view returns (bool);
    function getJobCall(uint64 serviceId, uint64 callId) external view returns (JobCallView memory);
    function getJobQuotedOperators(uint64 serviceId, uint64 callId) external view returns (address[] memory);
    function getService(uint64 serviceId) external view returns (ServiceView memory);
}
