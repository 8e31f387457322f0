; Exhibition VM Controller: guest agent for Windows XP (AutoIt v3)
;
; - a heartbeat every second: GET /api/v1/heartbeat?seq=N&boot=ID
; - a process watchdog: when the artwork's program is gone, or its window has
;   stopped answering ("Not Responding"), ask the controller for a revert:
;   GET /api/v1/revert/request?reason=...&severity=...
; - an idle monitor: after N minutes without a visitor touching mouse or
;   keyboard, ask for a fresh start: GET /api/v1/idle/reset?idle_duration=SECONDS
;
; Settings live in exhibition-guest.ini next to this script (or the compiled
; .exe); see README.md. Every request is bounded (WinHttp timeouts), and a
; controller that is down, refusing or silent is logged and retried: the
; script never stops on its own.
;
; AutoIt v3.3.14.5 (the last release that supports Windows XP).

#NoTrayIcon
#include <Misc.au3>
#include <Timers.au3>

Opt("MustDeclareVars", 1)

If _Singleton("exhibition-vm-controller-guest", 1) = 0 Then Exit ; already running

Global Const $INI = @ScriptDir & "\exhibition-guest.ini"
Global $sUrl = StringRegExpReplace(IniRead($INI, "controller", "url", "http://192.168.122.1:8000"), "/+$", "")
Global $sToken = IniRead($INI, "controller", "token", "")
Global $iInterval = Number(IniRead($INI, "heartbeat", "interval_ms", "1000"))
Global $iTimeout = Number(IniRead($INI, "heartbeat", "timeout_ms", "5000"))
Global $sProcess = IniRead($INI, "watchdog", "process", "")
Global $iStartGrace = Number(IniRead($INI, "watchdog", "start_grace_s", "60"))
Global $iMissingLimit = Number(IniRead($INI, "watchdog", "missing_s", "10"))
Global $iHungLimit = Number(IniRead($INI, "watchdog", "hung_s", "30"))
Global $iIdleMinutes = Number(IniRead($INI, "idle", "idle_minutes", "0"))
Global $iCooldown = Number(IniRead($INI, "requests", "cooldown_s", "120"))
Global $sLog = IniRead($INI, "log", "file", @ScriptDir & "\exhibition-guest.log")

If $iInterval < 100 Then $iInterval = 1000
If $iTimeout < 500 Then $iTimeout = 5000

; A COM failure (host unreachable, connection reset) calls this instead of
; ending the script; the failing call then sets @error.
Global $sComError = ""
Global $oComErrorHandler = ObjEvent("AutoIt.Error", "_ComError")

Global $iSeq = 0
Global $sBoot = Hex(Random(0, 2147483647, 1), 8)
Global $bFailing = False
Global $iFailures = 0
Global $hMissingSince = 0 ; TimerInit() when the program was first seen missing; 0 while it runs
Global $hHungSince = 0    ; TimerInit() when its window was first seen hung
Global $hLastRequest = 0  ; TimerInit() of the last revert or idle request
Global $hStarted = TimerInit()

_Log("started: heartbeats to " & $sUrl & " every " & $iInterval & " ms (boot=" & $sBoot & ")" & _
		($sProcess <> "" ? "; watching " & $sProcess : "") & _
		($iIdleMinutes > 0 ? "; idle reset after " & $iIdleMinutes & " min" : ""))

Global $hLoop, $iLeft
While 1
	$hLoop = TimerInit()
	_Heartbeat()
	If $sProcess <> "" And TimerDiff($hStarted) > $iStartGrace * 1000 Then _WatchProcess()
	If $iIdleMinutes > 0 Then _WatchIdle()
	$iLeft = $iInterval - TimerDiff($hLoop)
	If $iLeft > 0 Then Sleep($iLeft)
WEnd

; One GET to the controller. Returns the HTTP status, or 0 if there was no
; answer; $sWhy says what went wrong when the status is not 2xx.
Func _Get($sPathAndQuery, ByRef $sWhy)
	$sWhy = ""
	Local $oHttp = ObjCreate("WinHttp.WinHttpRequest.5.1")
	If Not IsObj($oHttp) Then
		$sWhy = "WinHttp.WinHttpRequest.5.1 is not available"
		Return 0
	EndIf
	$sComError = ""
	$oHttp.SetTimeouts($iTimeout, $iTimeout, $iTimeout, $iTimeout) ; resolve, connect, send, receive
	$oHttp.Open("GET", $sUrl & $sPathAndQuery, False)
	If $sToken <> "" Then $oHttp.SetRequestHeader("Authorization", "Bearer " & $sToken)
	If $sComError = "" Then $oHttp.Send()
	If $sComError <> "" Then
		$sWhy = $sComError
		Return 0
	EndIf
	Local $iStatus = $oHttp.Status
	If $iStatus < 200 Or $iStatus > 299 Then
		$sWhy = "HTTP " & $iStatus & ": " & StringLeft(StringStripWS($oHttp.ResponseText, 3), 200)
	EndIf
	Return $iStatus
EndFunc   ;==>_Get

Func _Heartbeat()
	$iSeq += 1
	Local $sWhy
	Local $iStatus = _Get("/api/v1/heartbeat?seq=" & $iSeq & "&boot=" & $sBoot, $sWhy)
	If $iStatus >= 200 And $iStatus <= 299 Then
		If $bFailing Then _Log("seq=" & $iSeq & " ok: the controller answers again after " & $iFailures & " failed heartbeat(s)")
		$bFailing = False
		$iFailures = 0
	Else
		$iFailures += 1
		If Not $bFailing Then _Log("seq=" & $iSeq & " FAIL: " & $sWhy)
		$bFailing = True
	EndIf
EndFunc   ;==>_Heartbeat

Func _WatchProcess()
	If Not ProcessExists($sProcess) Then
		$hHungSince = 0
		If $hMissingSince = 0 Then
			$hMissingSince = TimerInit()
			_Log($sProcess & " is not running")
		ElseIf TimerDiff($hMissingSince) > $iMissingLimit * 1000 Then
			_RequestRevert($sProcess & " is not running", "high")
		EndIf
		Return
	EndIf
	$hMissingSince = 0
	If _ProcessHung($sProcess) Then
		If $hHungSince = 0 Then
			$hHungSince = TimerInit()
			_Log($sProcess & " is not responding")
		ElseIf TimerDiff($hHungSince) > $iHungLimit * 1000 Then
			_RequestRevert($sProcess & " has not responded for " & $iHungLimit & " s", "critical")
		EndIf
	Else
		$hHungSince = 0
	EndIf
EndFunc   ;==>_WatchProcess

; True if a visible window of the process is what Windows calls "Not Responding".
Func _ProcessHung($sName)
	Local $iPid = ProcessExists($sName), $aWindows = WinList(), $hWnd, $aHung
	For $i = 1 To $aWindows[0][0]
		$hWnd = $aWindows[$i][1]
		If WinGetProcess($hWnd) = $iPid And BitAND(WinGetState($hWnd), 2) Then
			$aHung = DllCall("user32.dll", "int", "IsHungAppWindow", "hwnd", $hWnd)
			If Not @error And $aHung[0] <> 0 Then Return True
		EndIf
	Next
	Return False
EndFunc   ;==>_ProcessHung

Func _WatchIdle()
	Local $iIdle = _Timer_GetIdleTime() ; ms since the last keyboard or mouse input
	If $iIdle < $iIdleMinutes * 60000 Then Return
	If _CoolingDown() Then Return
	$hLastRequest = TimerInit()
	Local $sWhy
	Local $iStatus = _Get("/api/v1/idle/reset?idle_duration=" & Round($iIdle / 1000), $sWhy)
	If $iStatus = 202 Then
		_Log("idle for " & Round($iIdle / 60000) & " min: fresh start requested")
	Else
		_Log("idle reset not accepted: " & $sWhy)
	EndIf
EndFunc   ;==>_WatchIdle

; Ask once per cooldown: the controller answers 202 at once and reverts in
; the background (which ends this script's memory too), or 409 in maintenance.
Func _RequestRevert($sReason, $sSeverity)
	If _CoolingDown() Then Return
	$hLastRequest = TimerInit()
	Local $sWhy
	Local $iStatus = _Get("/api/v1/revert/request?reason=" & _UrlEncode($sReason) & "&severity=" & $sSeverity, $sWhy)
	If $iStatus = 202 Then
		_Log("revert requested (" & $sSeverity & "): " & $sReason)
	Else
		_Log("revert request not accepted: " & $sWhy)
	EndIf
EndFunc   ;==>_RequestRevert

Func _CoolingDown()
	Return $hLastRequest <> 0 And TimerDiff($hLastRequest) < $iCooldown * 1000
EndFunc   ;==>_CoolingDown

Func _UrlEncode($sText)
	Local $bUtf8 = StringToBinary($sText, 4), $sOut = "", $iByte
	For $i = 1 To BinaryLen($bUtf8)
		$iByte = Number(BinaryMid($bUtf8, $i, 1))
		If ($iByte >= 48 And $iByte <= 57) Or ($iByte >= 65 And $iByte <= 90) Or ($iByte >= 97 And $iByte <= 122) _
				Or $iByte = 45 Or $iByte = 46 Or $iByte = 95 Or $iByte = 126 Then
			$sOut &= Chr($iByte)
		Else
			$sOut &= "%" & Hex($iByte, 2)
		EndIf
	Next
	Return $sOut
EndFunc   ;==>_UrlEncode

Func _Log($sText)
	If $sLog = "" Then Return
	If FileGetSize($sLog) > 1048576 Then FileMove($sLog, $sLog & ".old", 1)
	FileWriteLine($sLog, @YEAR & "-" & @MON & "-" & @MDAY & " " & @HOUR & ":" & @MIN & ":" & @SEC & " " & $sText)
EndFunc   ;==>_Log

Func _ComError($oError)
	$sComError = StringStripWS($oError.description, 3) & " (0x" & Hex($oError.number, 8) & ")"
EndFunc   ;==>_ComError
