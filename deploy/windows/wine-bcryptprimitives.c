/*
 * Test-only stand-in for bcryptprimitives.dll under Wine 8 (Debian 12), which lacks that DLL.
 * Rust's standard library on Windows takes its random numbers from ProcessPrng there (every
 * Windows 10 and later has it); this one asks bcrypt.dll's system RNG, which Wine has.
 * deploy/windows/wine-smoke.sh builds it into the private Wine prefix of the smoke test; it is
 * never part of the Windows zip.
 */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
