"""Fixed-address memory for sleep mode: physical memory released and re-created at the same
virtual addresses, so CUDA graphs captured over it stay valid across a sleep.

A `VirtualArena` reserves an address range once and wraps it as one uint8 tensor. `release()`
gives the physical memory back (the addresses stay reserved), `restore()` backs the same
addresses with new memory (its content is undefined: the caller refills it). Two backends:

- CUDA: the driver's virtual memory API through ctypes on libcuda (`cuMemAddressReserve`,
  `cuMemCreate`, `cuMemMap`, `cuMemSetAccess`; `cuMemUnmap` + `cuMemRelease` on release),
  the tensor made from the pointer through DLPack (`tensor_at`);
- host: an anonymous private mmap, released with `madvise(MADV_DONTNEED)` (the pages come
  back zeroed on the next touch). The CPU engine uses it, so the CPU tests run the same path.

The address range and its memory are freed when the last tensor on it is dropped.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import torch

_GRANULARITY_MINIMUM = 0
_ALLOCATION_PINNED = 1
_LOCATION_DEVICE = 1
_ACCESS_READWRITE = 3
_HUGE_PAGE = 2 << 20  # host arenas: sized in huge pages
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [
        ("compressionType", ctypes.c_ubyte),
        ("gpuDirectRDMACapable", ctypes.c_ubyte),
        ("usage", ctypes.c_ushort),
        ("reserved", ctypes.c_ubyte * 4),
    ]


class _AllocationProp(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("requestedHandleTypes", ctypes.c_int),
        ("location", _Location),
        ("win32HandleMetaData", ctypes.c_void_p),
        ("allocFlags", _AllocFlags),
    ]


class _AccessDesc(ctypes.Structure):
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


class CudaDriver:
    """The few CUDA driver VMM calls the arena needs (ctypes on libcuda.so.1)."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        u64, size = ctypes.c_uint64, ctypes.c_size_t
        self._sig("cuGetErrorString", [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)])
        self._sig(
            "cuMemGetAllocationGranularity", [ctypes.POINTER(size), ctypes.c_void_p, ctypes.c_int]
        )
        self._sig("cuMemAddressReserve", [ctypes.POINTER(u64), size, size, u64, u64])
        self._sig("cuMemAddressFree", [u64, size])
        self._sig("cuMemCreate", [ctypes.POINTER(u64), size, ctypes.c_void_p, u64])
        self._sig("cuMemRelease", [u64])
        self._sig("cuMemMap", [u64, size, size, u64, u64])
        self._sig("cuMemUnmap", [u64, size])
        self._sig("cuMemSetAccess", [u64, size, ctypes.c_void_p, size])

    def _sig(self, name: str, args: list[Any]) -> None:
        fn = getattr(self.lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int

    def check(self, result: int, what: str) -> None:
        """Raise RuntimeError naming the call and the driver's message on a failure."""
        if result != 0:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(msg))
            text = msg.value.decode() if msg.value else "unknown error"
            raise RuntimeError(f"{what} failed: CUDA driver error {result} ({text})")

    def prop(self, device: int) -> _AllocationProp:
        """Pinned device memory on `device` (an ordinal)."""
        prop = _AllocationProp()
        prop.type = _ALLOCATION_PINNED
        prop.location = _Location(_LOCATION_DEVICE, device)
        return prop

    def granularity(self, device: int) -> int:
        """The smallest size and alignment of a physical allocation on `device`."""
        out = ctypes.c_size_t()
        prop = self.prop(device)
        fn = self.lib.cuMemGetAllocationGranularity
        self.check(fn(ctypes.byref(out), ctypes.byref(prop), _GRANULARITY_MINIMUM), "granularity")
        return int(out.value)

    def reserve(self, size: int, align: int) -> int:
        """A reserved virtual address range of `size` bytes."""
        ptr = ctypes.c_uint64()
        self.check(self.lib.cuMemAddressReserve(ctypes.byref(ptr), size, align, 0, 0), "reserve")
        return int(ptr.value)

    def map(self, ptr: int, size: int, device: int) -> int:
        """New physical memory mapped read-write at `ptr`; returns its handle."""
        handle = ctypes.c_uint64()
        prop = self.prop(device)
        self.check(
            self.lib.cuMemCreate(ctypes.byref(handle), size, ctypes.byref(prop), 0), "cuMemCreate"
        )
        try:
            self.check(self.lib.cuMemMap(ptr, size, 0, handle, 0), "cuMemMap")
        except RuntimeError:
            self.lib.cuMemRelease(handle)
            raise
        access = _AccessDesc(_Location(_LOCATION_DEVICE, device), _ACCESS_READWRITE)
        self.check(self.lib.cuMemSetAccess(ptr, size, ctypes.byref(access), 1), "cuMemSetAccess")
        return int(handle.value)

    def unmap(self, ptr: int, size: int, handle: int) -> None:
        """Unmap the range and give its physical memory back (the addresses stay reserved)."""
        self.check(self.lib.cuMemUnmap(ptr, size), "cuMemUnmap")
        self.check(self.lib.cuMemRelease(handle), "cuMemRelease")

    def free(self, ptr: int, size: int) -> None:
        """Give the reserved address range back."""
        self.check(self.lib.cuMemAddressFree(ptr, size), "cuMemAddressFree")


_DRIVER: CudaDriver | None = None


def cuda_driver() -> CudaDriver:
    """The process's driver bindings (loaded once)."""
    global _DRIVER
    if _DRIVER is None:
        _DRIVER = CudaDriver()
    return _DRIVER


class _CudaRange:
    """A reserved device address range and its physical memory, freed with the last tensor."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.driver = cuda_driver()
        self.ordinal = device.index if device.index is not None else torch.cuda.current_device()
        gran = self.driver.granularity(self.ordinal)
        self.size = -(-max(size, 1) // gran) * gran
        self.ptr = self.driver.reserve(self.size, gran)
        self.handle: int | None = None
        try:
            self.map()
        except BaseException:
            self.driver.free(self.ptr, self.size)
            raise
        self.__cuda_array_interface__ = {
            "shape": (self.size,), "typestr": "|u1", "data": (self.ptr, False), "version": 3,
        }  # fmt: skip

    def map(self) -> None:
        if self.handle is None:
            self.handle = self.driver.map(self.ptr, self.size, self.ordinal)

    def unmap(self) -> None:
        if self.handle is not None:
            self.driver.unmap(self.ptr, self.size, self.handle)
            self.handle = None

    def __del__(self) -> None:
        try:
            self.unmap()
            self.driver.free(self.ptr, self.size)
        except Exception:  # noqa: S110 - at interpreter exit the driver may be gone
            pass


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


_OWNED: dict[int, tuple[Any, ...]] = {}  # DLManagedTensor address -> what must stay alive


@_DELETER
def _dlpack_deleter(address: int) -> None:
    _OWNED.pop(address, None)  # the last tensor on the memory is gone: its owner may go


def tensor_at(ptr: int, nbytes: int, device: torch.device, owner: object) -> torch.Tensor:
    """A uint8 tensor over `nbytes` at address `ptr` on `device`, through DLPack (the device
    is stated, not looked up from the pointer); `owner` lives as long as the tensor does."""
    capsule_new = ctypes.pythonapi.PyCapsule_New
    capsule_new.restype = ctypes.py_object
    capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    shape = (ctypes.c_int64 * 1)(nbytes)
    managed = _DLManagedTensor()
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else 0
    if cuda and device.index is None:
        index = torch.cuda.current_device()
    managed.dl_tensor = _DLTensor(
        ptr, _DLDevice(2 if cuda else 1, index), 1, _DLDataType(1, 8, 1), shape, None, 0
    )
    managed.deleter = _dlpack_deleter
    address = ctypes.addressof(managed)
    _OWNED[address] = (managed, shape, owner)
    capsule = capsule_new(address, b"dltensor", None)
    return torch.from_dlpack(capsule)


class VirtualArena:
    """`nbytes` of memory at fixed addresses (one uint8 `tensor`) whose physical memory can
    be released and restored; CUDA devices use the driver's VMM API, the CPU an mmap."""

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.device = device
        self.nbytes = nbytes
        self.mapped = True
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.synchronize()  # the runtime makes the device's context current
                self._range: Any = _CudaRange(nbytes, device)
                try:
                    whole = tensor_at(self._range.ptr, self._range.size, device, self._range)
                except (RuntimeError, TypeError, ValueError):  # the CUDA array interface
                    whole = torch.as_tensor(self._range, device=device)
                self.tensor = whole[:nbytes]
        else:
            size = -(-max(nbytes, 1) // _HUGE_PAGE) * _HUGE_PAGE
            self._range = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            _advise(self._range, getattr(mmap, "MADV_HUGEPAGE", None))  # fewer page faults
            ptr = ctypes.addressof(ctypes.c_char.from_buffer(self._range))
            self.tensor = tensor_at(ptr, size, device, self._range)[:nbytes]

    def release(self) -> None:
        """Give the physical memory back; the tensor must not be touched until `restore`."""
        if not self.mapped:
            return
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.synchronize()
                self._range.unmap()
        else:
            self._range.madvise(mmap.MADV_DONTNEED)
        self.mapped = False

    def restore(self) -> None:
        """Back the same addresses with new physical memory (content undefined)."""
        if self.mapped:
            return
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                self._range.map()
        else:  # fault the pages in with one call, not one fault per page on first touch
            _advise(self._range, _MADV_POPULATE_WRITE)
        self.mapped = True


def _advise(region: mmap.mmap, advice: int | None) -> None:
    """`madvise` a hint; a kernel without it (EINVAL) just skips the hint."""
    if advice is None:
        return
    try:
        region.madvise(advice)
    except OSError:
        pass
