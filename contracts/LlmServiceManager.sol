// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.26;

import { IBlueprintServiceManager, ITangleMembership } from "./IBlueprintServiceManager.sol";

/// @title LlmServiceManager
/// @notice Service manager of the LLM inference blueprint. It keeps each operator's offer (the
///         models it serves with their limits and per-token prices, and its HTTP endpoint) and
///         rejects, in `onJobCall`, the jobs the chain can judge: an unknown job index, inputs that
///         are not `abi.encode(string model, uint32 maxTokens, string request)`, a model no operator
///         of the service offers (for a quote-paid job: no quoted operator), `maxTokens` above the
///         largest limit those operators offer, and a flat-rate job whose payment cannot cover
///         `maxTokens` at the cheapest completion price among the operators able to serve it.
///         Per-token prices (prompt and completion) are charged through signed quotes
///         (`submitJobFromQuote`), priced from the quoting operator's offer (`quotePrice`).
/// @dev Membership of a service is read back from the Tangle contract (`getServiceOperators`), the
///      source of truth, so no hook has to mirror joins and leaves. Every hook stays well within
///      the 500k gas stipend (measured in tests/contracts).
///
///      Offer wire format (the `registrationInputs` of `registerOperator`, and `updateOffer`):
///      `abi.encode(OFFER_TAG, string endpoint, ModelOffer[] models)`. Without the tag the payload is
///      taken as tnt-core's `abi.encode(OperatorPreferences{bytes ecdsaPublicKey, string rpcAddress})`,
///      which Tangle sends when an operator registers without inputs and on `updateOperatorPreferences`:
///      then only the endpoint is set (to `rpcAddress`) and the models are kept.
contract LlmServiceManager is IBlueprintServiceManager {
    // ------------------------------------------------------------------ types and constants

    /// @notice One model an operator serves. Prices are in wei of the native token per token.
    struct ModelOffer {
        string model;
        uint32 contextLength;
        uint32 maxOutputTokens;
        uint256 pricePerPromptToken;
        uint256 pricePerCompletionToken;
    }

    /// @notice An operator's full offer as the views return it.
    struct OperatorOffer {
        address operator;
        string endpoint;
        ModelOffer[] models;
        uint64 updatedAt;
    }

    /// @dev `tnt-core` `Types.OperatorPreferences`.
    struct OperatorPreferences {
        bytes ecdsaPublicKey;
        string rpcAddress;
    }

    struct OperatorRecord {
        bool registered;
        uint64 updatedAt;
        uint32 listIndex; // 1-based position in `_operators`
        string endpoint;
        string[] models; // model ids; their keys are keccak256(bytes(id))
    }

    /// @notice First word of an offer payload: keccak256("tangle-llm-blueprint.offer.v1").
    bytes32 public constant OFFER_TAG = keccak256("tangle-llm-blueprint.offer.v1");
    uint8 public constant JOB_CHAT = 0;
    uint8 public constant JOB_COMPLETION = 1;
    uint8 public constant JOB_EMBEDDING = 2;
    /// @notice tnt-core `Types.PricingModel.EventDriven`: a flat rate paid with each job.
    uint8 public constant PRICING_EVENT_DRIVEN = 2;
    /// @notice Bounds on one offer. `onRegister` runs under the 500k hook stipend, which holds about
    ///         four models with short ids (see the gas tests); `updateOffer` is not bound by it.
    uint256 public constant MAX_MODELS = 16;
    uint256 public constant MAX_MODEL_ID_BYTES = 96;
    uint256 public constant MAX_ENDPOINT_BYTES = 256;

    // ------------------------------------------------------------------ state

    /// @notice The Tangle contract, the only caller allowed on the hooks.
    address public immutable TANGLE;
    uint64 public blueprintId;
    address public blueprintOwner;
    bool public initialized;

    mapping(address => OperatorRecord) private _records;
    /// @dev operator => model key => packed terms (see `_pack`); zero means "not offered".
    mapping(address => mapping(bytes32 => uint256)) private _terms;
    address[] private _operators;
    /// @notice Results recorded per operator (by `onJobResult`).
    mapping(address => uint64) public resultsRecorded;

    // ------------------------------------------------------------------ events

    event BlueprintBound(uint64 indexed blueprintId, address indexed owner);
    event OfferRegistered(address indexed operator, string endpoint, uint256 modelCount);
    event OfferUpdated(address indexed operator, string endpoint, uint256 modelCount);
    event EndpointUpdated(address indexed operator, string endpoint);
    event OfferRemoved(address indexed operator);
    event ServiceInitialized(uint64 indexed serviceId, uint64 indexed requestId, address indexed owner);
    event ServiceTerminated(uint64 indexed serviceId, address indexed owner);
    event OperatorJoined(uint64 indexed serviceId, address indexed operator);
    event OperatorLeft(uint64 indexed serviceId, address indexed operator);
    event JobAccepted(uint64 indexed serviceId, uint64 indexed jobCallId, bytes32 indexed modelKey, uint32 maxTokens);
    event JobResultRecorded(
        uint64 indexed serviceId, uint64 indexed jobCallId, address indexed operator, bytes32 outputsHash
    );

    // ------------------------------------------------------------------ errors

    error NotTangle(address caller);
    error AlreadyInitialized();
    error NotRegistered(address operator);
    error MalformedOffer();
    error TooManyModels(uint256 count, uint256 max);
    error InvalidModelOffer(uint256 index);
    error DuplicateModel(uint256 index);
    error EndpointTooLong(uint256 length, uint256 max);
    error UnknownJob(uint8 job);
    error MalformedInputs();
    error ModelNotOffered(uint64 serviceId, string model);
    error MaxTokensAboveLimit(uint64 serviceId, uint32 maxTokens, uint32 limit);
    error PaymentBelowFloor(uint64 serviceId, uint256 payment, uint256 required);
    error ModelNotOfferedByQuotedOperators(uint64 serviceId, uint64 jobCallId, string model);
    error OperatorDoesNotOffer(address operator, string model);
    error AggregationNotSupported();

    modifier onlyTangle() {
        if (msg.sender != TANGLE) revert NotTangle(msg.sender);
        _;
    }

    /// @param tangle The Tangle (TNT Core) proxy that will call the hooks.
    constructor(address tangle) {
        TANGLE = tangle;
    }

    // ================================================================== blueprint / operators

    /// @inheritdoc IBlueprintServiceManager
    function onBlueprintCreated(uint64 id, address owner, address) external onlyTangle {
        if (initialized) revert AlreadyInitialized();
        initialized = true;
        blueprintId = id;
        blueprintOwner = owner;
        emit BlueprintBound(id, owner);
    }

    /// @inheritdoc IBlueprintServiceManager
    function onRegister(address operator, bytes calldata registrationInputs) external payable onlyTangle {
        OperatorRecord storage rec = _records[operator];
        if (!rec.registered) {
            rec.registered = true;
            _operators.push(operator);
            rec.listIndex = uint32(_operators.length);
        }
        _applyPayload(operator, registrationInputs);
        emit OfferRegistered(operator, rec.endpoint, rec.models.length);
    }

    /// @inheritdoc IBlueprintServiceManager
    function onUpdatePreferences(address operator, bytes calldata newPreferences) external payable onlyTangle {
        if (!_records[operator].registered) revert NotRegistered(operator);
        _applyPayload(operator, newPreferences);
    }

    /// @notice Replace the caller's offer directly (not bound by the hook stipend). Tangle's
    ///         `updateOperatorPreferences` only carries the endpoint, so this is how an operator
    ///         changes its models and prices.
    function updateOffer(bytes calldata offer) external {
        if (!_records[msg.sender].registered) revert NotRegistered(msg.sender);
        if (!ITangleMembership(TANGLE).isOperatorRegistered(blueprintId, msg.sender)) {
            revert NotRegistered(msg.sender);
        }
        if (!_isOffer(offer)) revert MalformedOffer();
        _applyPayload(msg.sender, offer);
    }

    /// @inheritdoc IBlueprintServiceManager
    function onUnregister(address operator) external onlyTangle {
        OperatorRecord storage rec = _records[operator];
        if (!rec.registered) return;
        _clearModels(operator, rec);
        uint256 index = rec.listIndex - 1;
        uint256 last = _operators.length - 1;
        if (index != last) {
            address moved = _operators[last];
            _operators[index] = moved;
            _records[moved].listIndex = uint32(index + 1);
        }
        _operators.pop();
        delete _records[operator];
        emit OfferRemoved(operator);
    }

    // ================================================================== services

    /// @inheritdoc IBlueprintServiceManager
    function onRequest(uint64, address, address[] calldata, bytes calldata, uint64, address, uint256)
        external
        payable
        onlyTangle
    { }

    /// @inheritdoc IBlueprintServiceManager
    function onApprove(address, uint64, uint8) external payable onlyTangle { }

    /// @inheritdoc IBlueprintServiceManager
    function onReject(address, uint64) external onlyTangle { }

    /// @inheritdoc IBlueprintServiceManager
    function onServiceInitialized(uint64, uint64 requestId, uint64 serviceId, address owner, address[] calldata, uint64)
        external
        onlyTangle
    {
        emit ServiceInitialized(serviceId, requestId, owner);
    }

    /// @inheritdoc IBlueprintServiceManager
    function onServiceTermination(uint64 serviceId, address owner) external onlyTangle {
        emit ServiceTerminated(serviceId, owner);
    }

    /// @inheritdoc IBlueprintServiceManager
    function canJoin(uint64, address operator) external view returns (bool) {
        return _records[operator].registered && _records[operator].models.length > 0;
    }

    /// @inheritdoc IBlueprintServiceManager
    function onOperatorJoined(uint64 serviceId, address operator, uint16) external onlyTangle {
        emit OperatorJoined(serviceId, operator);
    }

    /// @inheritdoc IBlueprintServiceManager
    function canLeave(uint64, address) external pure returns (bool) {
        return true;
    }

    /// @inheritdoc IBlueprintServiceManager
    function onOperatorLeft(uint64 serviceId, address operator) external onlyTangle {
        emit OperatorLeft(serviceId, operator);
    }

    /// @inheritdoc IBlueprintServiceManager
    function onExitScheduled(uint64, address, uint64) external onlyTangle { }

    /// @inheritdoc IBlueprintServiceManager
    function onExitCanceled(uint64, address) external onlyTangle { }

    // ================================================================== jobs

    /// @inheritdoc IBlueprintServiceManager
    function onJobCall(uint64 serviceId, uint8 job, uint64 jobCallId, bytes calldata inputs)
        external
        payable
        onlyTangle
    {
        (bytes32 modelKey, uint32 maxTokens, uint256 floor) = _checkJob(serviceId, job, inputs);
        // The call record (with what was paid) exists before this hook runs.
        ITangleMembership tangle = ITangleMembership(TANGLE);
        ITangleMembership.JobCallView memory call = tangle.getJobCall(serviceId, jobCallId);
        if (call.isRFQ) {
            // Only quoted operators may answer: one of them must serve the model. The price was
            // agreed in the quotes (each priced from its operator's offer), not checked here.
            if (!_anyOffers(tangle.getJobQuotedOperators(serviceId, jobCallId), modelKey)) {
                (bytes calldata model,) = _parseInputs(inputs);
                revert ModelNotOfferedByQuotedOperators(serviceId, jobCallId, string(model));
            }
        } else if (call.payment < floor) {
            // Nothing paid per job is fine when the service is paid otherwise (once, or by
            // subscription); a flat-rate (event-driven) job must pay for what it asks.
            if (call.payment > 0 || tangle.getService(serviceId).pricing == PRICING_EVENT_DRIVEN) {
                revert PaymentBelowFloor(serviceId, call.payment, floor);
            }
        }
        emit JobAccepted(serviceId, jobCallId, modelKey, maxTokens);
    }

    /// @notice The checks `onJobCall` makes, for callers that want to know before they submit.
    ///         Reverts with the same custom errors.
    function checkJob(uint64 serviceId, uint8 job, bytes calldata inputs)
        external
        view
        returns (bytes32 modelKey, uint32 limit)
    {
        uint32 maxTokens;
        (modelKey, maxTokens,) = _checkJob(serviceId, job, inputs);
        (, limit,) = _serviceTerms(serviceId, modelKey, maxTokens);
    }

    /// @notice The least flat-rate payment a job for `model` with `maxTokens` must carry:
    ///         `maxTokens` x the cheapest completion price among the service's operators that
    ///         offer the model with a limit of at least `maxTokens` (0 when none can serve it).
    function jobPaymentFloor(uint64 serviceId, string calldata model, uint32 maxTokens)
        external
        view
        returns (uint256)
    {
        (,, uint256 floor) = _serviceTerms(serviceId, keccak256(bytes(model)), maxTokens);
        return floor;
    }

    /// @notice What `operator`'s offer charges for a request of `promptTokens` that may generate
    ///         up to `maxTokens`: the price a quote from that operator is computed from.
    function quotePrice(address operator, string calldata model, uint256 promptTokens, uint256 maxTokens)
        external
        view
        returns (uint256)
    {
        uint256 packed = _terms[operator][keccak256(bytes(model))];
        if (packed == 0) revert OperatorDoesNotOffer(operator, model);
        return promptTokens * uint96(packed >> 64) + maxTokens * uint96(packed >> 160);
    }

    /// @inheritdoc IBlueprintServiceManager
    function onJobResult(uint64 serviceId, uint8, uint64 jobCallId, address operator, bytes32, bytes calldata outputs)
        external
        payable
        onlyTangle
    {
        unchecked {
            resultsRecorded[operator] += 1;
        }
        emit JobResultRecorded(serviceId, jobCallId, operator, keccak256(outputs));
    }

    /// @inheritdoc IBlueprintServiceManager
    function getRequiredResultCount(uint64, uint8) external pure returns (uint32) {
        return 1;
    }

    /// @inheritdoc IBlueprintServiceManager
    function requiresAggregation(uint64, uint8) external pure returns (bool) {
        return false;
    }

    /// @inheritdoc IBlueprintServiceManager
    function getAggregationThreshold(uint64, uint8) external pure returns (uint16, uint8) {
        return (0, 0);
    }

    /// @inheritdoc IBlueprintServiceManager
    function onAggregatedResult(uint64, uint8, uint64, bytes calldata, uint256, uint256[2] calldata, uint256[4] calldata)
        external
        view
        onlyTangle
    {
        revert AggregationNotSupported();
    }

    // ================================================================== configuration (defaults)

    function getHeartbeatInterval(uint64) external pure returns (bool, uint64) {
        return (true, 0);
    }

    function getHeartbeatThreshold(uint64) external pure returns (bool, uint8) {
        return (true, 0);
    }

    function getSlashingWindow(uint64) external pure returns (bool, uint64) {
        return (true, 0);
    }

    function getExitConfig(uint64) external pure returns (bool, uint64, uint64, bool) {
        return (true, 0, 0, false);
    }

    function getNonPaymentTerminationPolicy(uint64) external pure returns (bool, uint64) {
        return (true, 0);
    }

    function forceRemoveAllowsBelowMin(uint64) external pure returns (bool) {
        return false;
    }

    function computeBillAdjustmentBps(uint64, uint64, uint64) external pure returns (uint16) {
        return 10_000;
    }

    function getMinOperatorStake() external pure returns (bool, uint256) {
        return (true, 0);
    }

    /// @dev The blueprint owner may propose slashes (the manager itself has no slashing logic).
    function querySlashingOrigin(uint64) external view returns (address) {
        return blueprintOwner;
    }

    /// @dev No custom dispute path: the operator and the protocol's slash admin dispute.
    function queryDisputeOrigin(uint64) external pure returns (address) {
        return address(0);
    }

    function queryDeveloperPaymentAddress(uint64) external view returns (address payable) {
        return payable(blueprintOwner);
    }

    function queryIsPaymentAssetAllowed(uint64, address) external pure returns (bool) {
        return true;
    }

    function onUnappliedSlash(uint64, bytes calldata, uint8) external onlyTangle { }

    function onSlash(uint64, bytes calldata, uint8) external onlyTangle { }

    function onBinaryVersionPublished(uint64, BinaryVersion calldata, string calldata) external onlyTangle { }

    function onOperatorBinaryAcked(uint64, uint64, address) external onlyTangle { }

    // ================================================================== views

    /// @notice Every operator registered to the blueprint with its offer.
    function getOperators() external view returns (OperatorOffer[] memory offers) {
        offers = new OperatorOffer[](_operators.length);
        for (uint256 i = 0; i < _operators.length; i++) {
            offers[i] = _offerOf(_operators[i]);
        }
    }

    /// @notice One operator's offer (empty endpoint and models when not registered).
    function getOffer(address operator) external view returns (OperatorOffer memory) {
        return _offerOf(operator);
    }

    /// @notice The operators of a service (read from Tangle) with their offers.
    function getServiceOffers(uint64 serviceId) external view returns (OperatorOffer[] memory offers) {
        address[] memory ops = ITangleMembership(TANGLE).getServiceOperators(serviceId);
        offers = new OperatorOffer[](ops.length);
        for (uint256 i = 0; i < ops.length; i++) {
            offers[i] = _offerOf(ops[i]);
        }
    }

    /// @notice The blueprint's operators that serve `model`, with their terms for it.
    function operatorsForModel(string calldata model)
        external
        view
        returns (address[] memory operators, ModelOffer[] memory terms)
    {
        return _filterByModel(_operators, model);
    }

    /// @notice The operators of a service that serve `model`, with their terms for it.
    function serviceOperatorsForModel(uint64 serviceId, string calldata model)
        external
        view
        returns (address[] memory operators, ModelOffer[] memory terms)
    {
        address[] memory ops = ITangleMembership(TANGLE).getServiceOperators(serviceId);
        return _filterByModel(ops, model);
    }

    /// @notice Whether an operator of the service offers `model`, and the largest `maxTokens` allowed.
    function serviceModelLimit(uint64 serviceId, string calldata model)
        external
        view
        returns (bool offered, uint32 maxOutputTokens)
    {
        (offered, maxOutputTokens,) = _serviceTerms(serviceId, keccak256(bytes(model)), 0);
    }

    /// @notice Decode an offer payload; used through an external self-call so that malformed bytes
    ///         become a clean `MalformedOffer` revert instead of an empty one.
    function decodeOffer(bytes calldata offer)
        external
        pure
        returns (bytes32 tag, string memory endpoint, ModelOffer[] memory models)
    {
        return abi.decode(offer, (bytes32, string, ModelOffer[]));
    }

    /// @notice Decode tnt-core's `abi.encode(OperatorPreferences)` (same self-call reason).
    function decodePreferences(bytes calldata prefs) external pure returns (OperatorPreferences memory) {
        return abi.decode(prefs, (OperatorPreferences));
    }

    // ================================================================== internals

    function _isOffer(bytes calldata payload) private pure returns (bool) {
        return payload.length >= 96 && bytes32(payload[0:32]) == OFFER_TAG;
    }

    /// @dev Apply a registration/update payload: a tagged offer replaces endpoint and models; the
    ///      Tangle preferences encoding only sets the endpoint.
    function _applyPayload(address operator, bytes calldata payload) private {
        OperatorRecord storage rec = _records[operator];
        rec.updatedAt = uint64(block.timestamp);
        if (_isOffer(payload)) {
            string memory endpoint;
            ModelOffer[] memory models;
            try this.decodeOffer(payload) returns (bytes32, string memory e, ModelOffer[] memory m) {
                endpoint = e;
                models = m;
            } catch {
                revert MalformedOffer();
            }
            _setEndpoint(rec, endpoint);
            _setModels(operator, rec, models);
            emit OfferUpdated(operator, endpoint, models.length);
        } else {
            try this.decodePreferences(payload) returns (OperatorPreferences memory p) {
                _setEndpoint(rec, p.rpcAddress);
                emit EndpointUpdated(operator, p.rpcAddress);
            } catch {
                revert MalformedOffer();
            }
        }
    }

    function _setEndpoint(OperatorRecord storage rec, string memory endpoint) private {
        uint256 len = bytes(endpoint).length;
        if (len > MAX_ENDPOINT_BYTES) revert EndpointTooLong(len, MAX_ENDPOINT_BYTES);
        if (keccak256(bytes(rec.endpoint)) != keccak256(bytes(endpoint))) {
            rec.endpoint = endpoint;
        }
    }

    function _setModels(address operator, OperatorRecord storage rec, ModelOffer[] memory models) private {
        if (models.length > MAX_MODELS) revert TooManyModels(models.length, MAX_MODELS);
        _clearModels(operator, rec);
        for (uint256 i = 0; i < models.length; i++) {
            ModelOffer memory m = models[i];
            uint256 idLen = bytes(m.model).length;
            if (
                idLen == 0 || idLen > MAX_MODEL_ID_BYTES || m.maxOutputTokens == 0
                    || m.contextLength < m.maxOutputTokens || m.pricePerPromptToken > type(uint96).max
                    || m.pricePerCompletionToken > type(uint96).max
            ) {
                revert InvalidModelOffer(i);
            }
            bytes32 key = keccak256(bytes(m.model));
            if (_terms[operator][key] != 0) revert DuplicateModel(i);
            _terms[operator][key] = _pack(m);
            rec.models.push(m.model);
        }
    }

    function _clearModels(address operator, OperatorRecord storage rec) private {
        string[] storage ids = rec.models;
        for (uint256 i = ids.length; i > 0; i--) {
            delete _terms[operator][keccak256(bytes(ids[i - 1]))];
            ids.pop();
        }
    }

    /// @dev maxOutputTokens (bits 0-31) | contextLength (32-63) | prompt price (64-159) |
    ///      completion price (160-255). Never zero since maxOutputTokens >= 1.
    function _pack(ModelOffer memory m) private pure returns (uint256) {
        return uint256(m.maxOutputTokens) | (uint256(m.contextLength) << 32) | (m.pricePerPromptToken << 64)
            | (m.pricePerCompletionToken << 160);
    }

    function _unpack(string memory model, uint256 packed) private pure returns (ModelOffer memory) {
        return ModelOffer({
            model: model,
            maxOutputTokens: uint32(packed),
            contextLength: uint32(packed >> 32),
            pricePerPromptToken: uint96(packed >> 64),
            pricePerCompletionToken: uint96(packed >> 160)
        });
    }

    function _offerOf(address operator) private view returns (OperatorOffer memory offer) {
        OperatorRecord storage rec = _records[operator];
        offer.operator = operator;
        offer.endpoint = rec.endpoint;
        offer.updatedAt = rec.updatedAt;
        uint256 n = rec.models.length;
        offer.models = new ModelOffer[](n);
        for (uint256 i = 0; i < n; i++) {
            string memory id = rec.models[i];
            offer.models[i] = _unpack(id, _terms[operator][keccak256(bytes(id))]);
        }
    }

    function _filterByModel(address[] memory ops, string calldata name)
        private
        view
        returns (address[] memory operators, ModelOffer[] memory terms)
    {
        bytes32 key = keccak256(bytes(name));
        uint256 count;
        for (uint256 i = 0; i < ops.length; i++) {
            if (_terms[ops[i]][key] != 0) count++;
        }
        operators = new address[](count);
        terms = new ModelOffer[](count);
        uint256 j;
        for (uint256 i = 0; i < ops.length; i++) {
            uint256 packed = _terms[ops[i]][key];
            if (packed != 0) {
                operators[j] = ops[i];
                terms[j] = _unpack(name, packed);
                j++;
            }
        }
    }

    /// @dev Over the service's operators offering `key`: whether any does, the largest output limit,
    ///      and `maxTokens` x the cheapest completion price among those whose limit covers it.
    function _serviceTerms(uint64 serviceId, bytes32 key, uint32 maxTokens)
        private
        view
        returns (bool offered, uint32 limit, uint256 floor)
    {
        address[] memory ops = ITangleMembership(TANGLE).getServiceOperators(serviceId);
        uint256 cheapest = type(uint256).max;
        for (uint256 i = 0; i < ops.length; i++) {
            uint256 packed = _terms[ops[i]][key];
            if (packed != 0) {
                offered = true;
                uint32 opLimit = uint32(packed);
                if (opLimit > limit) limit = opLimit;
                uint256 price = uint96(packed >> 160);
                if (opLimit >= maxTokens && price < cheapest) cheapest = price;
            }
        }
        if (cheapest != type(uint256).max) floor = uint256(maxTokens) * cheapest;
    }

    function _anyOffers(address[] memory ops, bytes32 key) private view returns (bool) {
        for (uint256 i = 0; i < ops.length; i++) {
            if (_terms[ops[i]][key] != 0) return true;
        }
        return false;
    }

    function _checkJob(uint64 serviceId, uint8 job, bytes calldata inputs)
        private
        view
        returns (bytes32 modelKey, uint32 maxTokens, uint256 floor)
    {
        if (job > JOB_EMBEDDING) revert UnknownJob(job);
        bytes calldata model;
        (model, maxTokens) = _parseInputs(inputs);
        modelKey = keccak256(model);
        bool offered;
        uint32 limit;
        (offered, limit, floor) = _serviceTerms(serviceId, modelKey, maxTokens);
        if (!offered) revert ModelNotOffered(serviceId, string(model));
        if (maxTokens > limit) revert MaxTokensAboveLimit(serviceId, maxTokens, limit);
    }

    /// @dev Validate `abi.encode(string model, uint32 maxTokens, string request)` by hand:
    ///      `abi.decode` on malformed bytes reverts without data, which would give callers no reason.
    function _parseInputs(bytes calldata inputs) private pure returns (bytes calldata model, uint32 maxTokens) {
        if (inputs.length < 96) revert MalformedInputs();
        uint256 rawMax = uint256(bytes32(inputs[32:64]));
        if (rawMax > type(uint32).max) revert MalformedInputs();
        model = _stringAt(inputs, uint256(bytes32(inputs[0:32])));
        _stringAt(inputs, uint256(bytes32(inputs[64:96])));
        if (model.length == 0 || model.length > MAX_MODEL_ID_BYTES) revert MalformedInputs();
        maxTokens = uint32(rawMax);
    }

    function _stringAt(bytes calldata data, uint256 offset) private pure returns (bytes calldata) {
        if (offset < 96 || offset > data.length - 32) revert MalformedInputs();
        uint256 len = uint256(bytes32(data[offset:offset + 32]));
        uint256 start = offset + 32;
        if (len > data.length - start) revert MalformedInputs();
        return data[start:start + len];
    }
}
