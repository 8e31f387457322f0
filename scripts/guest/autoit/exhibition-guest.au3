; Exhibition VM Controller: guest agent for Windows XP (AutoIt v3)
;
; - a heartbeat every second: GET /api/v1/heartbeat?seq=N&boot=ID
; - a process watchdog: when the artwork's program is gone, or its window has
;   stopped answering ("Not Responding"), ask the controller for a revert:
;   GET /api/v1/revert/request?reason=...&severity=...
; - an idle monitor: after N minutes without a visitor touching mouse or
;   keyboard, ask for a fresh start: GET /api/v1/idle/reset?idle_duration=SECONDS
; - progress (optional): each heartbeat carries &progress=VALUE, read from the
;   artwork's window (a checksum of pixels in its client area and/or its
;   title), so that the controller can tell a frozen artwork from a playing one
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
Global $sProgressMethod = StringLower(StringStripWS(IniRead($INI, "progress", "method", "off"), 3))
Global $sProgressWindow = IniRead($INI, "progress", "window", "[CLASS:ShockwaveFlash]")
Global $sProgressArea = IniRead($INI, "progress", "area", "")
Global $iProgressStep = Number(IniRead($INI, "progress", "step", "2"))

If $iInterval < 100 Then $iInterval = 1000
If $iTimeout < 500 Then $iTimeout = 5000
If $iProgressStep < 1 Then $iProgressStep = 1
Global Const $PROGRESS_MAX_LENGTH = 128 ; characters: the controller's limit on a progress value

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
Global $bWindowGone = False ; the artwork's window was missing at the last heartbeat

If Not StringRegExp($sProgressMethod, "^(off|title|pixels|both)$") Then
	_Log("[progress] method=" & $sProgressMethod & " is not off, title, pixels or both: no progress is sent")
	$sProgressMethod = "off"
ElseIf $sProgressMethod <> "off" And StringStripWS($sProgressWindow, 8) = "" Then
	_Log("[progress] window is empty (it would match every window): no progress is sent")
	$sProgressMethod = "off"
EndIf

_Log("started: heartbeats to " & $sUrl & " every " & $iInterval & " ms (boot=" & $sBoot & ")" & _
		($sProcess <> "" ? "; watching " & $sProcess : "") & _
		($iIdleMinutes > 0 ? "; idle reset after " & $iIdleMinutes & " min" : "") & _
		($sProgressMethod <> "off" ? "; progress: " & $sProgressMethod & " of " & $sProgressWindow : ""))

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
	Local $iStatus = _Get("/api/v1/heartbeat?seq=" & $iSeq & "&boot=" & $sBoot & _ProgressQuery(), $sWhy)
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

; "&progress=VALUE" for this heartbeat, or "" (method off, or nothing to send).
Func _ProgressQuery()
	If $sProgressMethod = "off" Then Return ""
	Local $sValue = StringLeft(_Progress(), $PROGRESS_MAX_LENGTH)
	If $sValue = "" Then Return ""
	Return "&progress=" & _UrlEncode($sValue)
EndFunc   ;==>_ProgressQuery

; What the artwork's window shows now: the checksum of the area ("pixels"),
; its title ("title"), or both ("CHECKSUM TITLE"); "gone" without a window.
; A crashed or closed projector gives "gone" at every heartbeat: the value
; stops changing, which the controller's progress rule catches.
Func _Progress()
	Local $hWnd = _ArtworkWindow()
	If Not IsHWnd($hWnd) Then
		If Not $bWindowGone Then _Log("progress: no window " & $sProgressWindow & ": sending progress=gone")
		$bWindowGone = True
		Return "gone"
	EndIf
	If $bWindowGone Then _Log("progress: window " & $sProgressWindow & " is back")
	$bWindowGone = False
	Local $sValue = ""
	If $sProgressMethod = "pixels" Or $sProgressMethod = "both" Then $sValue = _AreaChecksum($hWnd)
	If $sProgressMethod = "title" Or $sProgressMethod = "both" Then
		If $sValue <> "" Then $sValue &= " "
		$sValue &= WinGetTitle($hWnd)
	EndIf
	Return $sValue
EndFunc   ;==>_Progress

; The visible window that matches [progress] window with the largest client
; area (an old Director projector has several ImlWinCls windows; the stage is
; the big one), or 0 if there is none.
Func _ArtworkWindow()
	Local $aWindows = WinList($sProgressWindow), $hBest = 0, $iBest = -1, $aSize
	For $i = 1 To $aWindows[0][0]
		If BitAND(WinGetState($aWindows[$i][1]), 2) Then
			$aSize = WinGetClientSize($aWindows[$i][1])
			If IsArray($aSize) Then
				If $aSize[0] * $aSize[1] > $iBest Then
					$iBest = $aSize[0] * $aSize[1]
					$hBest = $aWindows[$i][1]
				EndIf
			EndIf
		EndIf
	Next
	Return $hBest
EndFunc   ;==>_ArtworkWindow

; PixelChecksum of [progress] area (left,top,right,bottom inside the window's
; client area; empty: all of it), read from the screen: it changes while the
; artwork draws there and stays the same when the artwork is frozen or a
; dialog covers the area. "" if the area cannot be read (e.g. minimized).
Func _AreaChecksum($hWnd)
	Local $aClient = WinGetClientSize($hWnd)
	If Not IsArray($aClient) Then Return ""
	Local $iLeft = 0, $iTop = 0, $iRight = $aClient[0] - 1, $iBottom = $aClient[1] - 1
	Local $aArea = StringSplit(StringStripWS($sProgressArea, 8), ",")
	If $aArea[0] = 4 Then
		$iLeft = Number($aArea[1])
		$iTop = Number($aArea[2])
		$iRight = Number($aArea[3])
		$iBottom = Number($aArea[4])
	EndIf
	If $iRight < $iLeft Or $iBottom < $iTop Then Return ""
	; Where the client area's corner is on the screen (PixelChecksum takes screen coordinates).
	Local $tPoint = DllStructCreate("long X;long Y")
	Local $aCall = DllCall("user32.dll", "int", "ClientToScreen", "hwnd", $hWnd, "ptr", DllStructGetPtr($tPoint))
	If Not IsArray($aCall) Then Return ""
	If $aCall[0] = 0 Then Return ""
	Local $iX = DllStructGetData($tPoint, "X"), $iY = DllStructGetData($tPoint, "Y")
	Return String(PixelChecksum($iX + $iLeft, $iY + $iTop, $iX + $iRight, $iY + $iBottom, $iProgressStep))
EndFunc   ;==>_AreaChecksum

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
